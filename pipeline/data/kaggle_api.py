"""The official `kaggle` client, imported only when Kaggle is really needed, with errors that say what to do.

`import kaggle` authenticates at import time (printing help, or calling the network), so this module imports
it lazily: a demo or local-archive run never loads it. Credentials are never printed or logged.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path

from pipeline.core.errors import KaggleError

CREDENTIALS_HELP = (
    "Kaggle needs your API credentials. Create a token on https://www.kaggle.com/settings (API > Create New "
    "Token), then either save the downloaded kaggle.json as ~/.kaggle/kaggle.json (chmod 600; KAGGLE_CONFIG_DIR "
    "moves the folder), or set KAGGLE_USERNAME and KAGGLE_KEY, or set KAGGLE_API_TOKEN to a new-style access token."
)
UPLOAD_FAILED = "Could not submit to competition"


def rules_url(slug: str) -> str:
    return f"https://www.kaggle.com/competitions/{slug}/rules"


def connect():
    """An authenticated KaggleApi, or KaggleError with the ways to provide credentials."""
    with contextlib.redirect_stdout(io.StringIO()):  # the client prints its own help at import without credentials
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        try:
            api.authenticate()
        except SystemExit:
            raise KaggleError(f"No Kaggle credentials found. {CREDENTIALS_HELP}") from None
    return api


def explain(error: Exception, slug: str, action: str, kind: str = "competition") -> KaggleError:
    """Turn the client's HTTP and network errors into a KaggleError naming the fix.

    `kind` is what `slug` names: "competition" (403 means its rules are not accepted), "dataset" or "kernel"
    (`slug` is then "owner/slug", and 403/404 mean your account cannot see or change it).
    """
    import requests

    if isinstance(error, requests.exceptions.HTTPError) and error.response is not None:
        code = error.response.status_code
        if code == 401:
            return KaggleError(
                f"Kaggle rejected your credentials (HTTP 401) when trying to {action} '{slug}'. The token may be "
                f"expired or mistyped. {CREDENTIALS_HELP}"
            )
        if code == 403 and kind == "competition":
            return KaggleError(
                f"Kaggle refused to {action} '{slug}' (HTTP 403): you have not accepted this competition's rules. "
                f"Open {rules_url(slug)}, accept the rules with the account whose token you use, then run again."
            )
        if code in (403, 404) and kind != "competition":
            return KaggleError(
                f"Kaggle refused to {action} the {kind} '{slug}' (HTTP {code}): your account cannot see or change "
                f"it. Check the ref (owner/slug, the owner being the Kaggle username of your token) and run again."
            )
        if code == 404:
            return KaggleError(
                f"Kaggle has no competition '{slug}' (HTTP 404) that your account can see; check the slug "
                "(kaggle competitions list -s <words>)."
            )
        if code == 429 or code >= 500:
            return KaggleError(f"Kaggle answered HTTP {code} when trying to {action} '{slug}'; try again later.")
        return KaggleError(
            f"Kaggle refused to {action} '{slug}' (HTTP {code}): {_first_line(error)}. Fix what it names and run again."
        )
    if isinstance(error, requests.exceptions.RequestException):
        fallback = (" Or download the archive on another machine and set data.source to its path."
                    if action == "download" else "")
        return KaggleError(
            f"Cannot reach Kaggle to {action} '{slug}' ({type(error).__name__}). Check your internet connection "
            f"and proxy settings.{fallback}"
        )
    return KaggleError(f"Kaggle client failed to {action} '{slug}': {_first_line(error)}")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def download_competition(slug: str, folder: Path) -> Path:
    """`kaggle competitions download -c slug` into `folder`, unless a complete copy is already there.

    Competition archives do not change, and a real one is gigabytes: a copy whose zip directory is intact is
    reused without asking Kaggle (delete it to fetch again).
    """
    import requests

    path = folder / f"{slug}.zip"
    if path.is_file() and zipfile.is_zipfile(path):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    api = connect()
    try:
        api.competition_download_files(slug, path=str(folder), force=False, quiet=True)
    except (requests.exceptions.RequestException, OSError) as e:
        raise explain(e, slug, "download") from None
    if not path.is_file():
        raise KaggleError(f"Kaggle's download of '{slug}' did not produce {path}; try again, or download it by hand.")
    return path


def submit_file(slug: str, path: Path, message: str) -> str:
    """Upload a submission; return its ref. The client reports a failed upload only in `.message`: raise then."""
    import requests

    api = connect()
    try:
        result = api.competition_submit(str(path), message, slug, quiet=True)
    except (requests.exceptions.RequestException, OSError) as e:
        raise explain(e, slug, "submit to") from None
    ref = getattr(result, "ref", None)
    if getattr(result, "message", None) == UPLOAD_FAILED or not ref:
        raise KaggleError(
            f"Kaggle did not accept the upload of {path} to '{slug}' ({getattr(result, 'message', 'no reply')}). "
            f"Check that the competition still takes submissions and that its rules are accepted ({rules_url(slug)}), "
            "then run again."
        )
    return str(ref)


def list_submissions(slug: str) -> list:
    """Your submissions to `slug`, newest first, as the client returns them."""
    import requests

    api = connect()
    try:
        return list(api.competition_submissions(slug) or [])
    except (requests.exceptions.RequestException, OSError) as e:
        raise explain(e, slug, "list submissions of") from None
