"""Competitions are data: a record per competition in pipeline/competitions/, tracked per competition by DVC, so
adding one (a record and a params section) or editing one re-runs that competition's stages and no other."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

from conftest import make_project, tiny_params
from pipeline.core.competitions import COMPETITIONS, load_record
from pipeline.core.errors import ConfigError

SHAPES = """\
slug: shape-sorter
title: Shape Sorter
classes: [circle, square, triangle]
class_descriptions: [a disc, a square, a triangle]
train_pattern: 'train/(?P<label>[a-z]+)/(?P<id>[^/]+\\.png)'
test_pattern: 'test/(?P<id>[^/]+)\\.png'
id_column: id
submission: label
submission_columns: [shape]
metric: f1_micro
"""


def fingerprints(root: Path) -> dict[str, str]:
    """What `dvc status` compares for every stage DVC resolves from dvc.yaml: its command, its file deps' contents
    and its params' values. A stage whose fingerprint is unchanged is not re-run."""
    out = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            parts = [stage.cmd]
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    parts.append(json.dumps(dep.read_params(), sort_keys=True, default=str))
                else:
                    path = Path(dep.fs_path)
                    parts.append(dep.def_path + (hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else ""))
            out[stage.name] = hashlib.md5("\n".join(parts).encode()).hexdigest()
    return out


def _changed(before: dict, after: dict) -> set[str]:
    return {name for name in after if before.get(name) != after[name]}


@pytest.fixture
def project(tmp_path):
    make_project(tmp_path, tiny_params())
    return tmp_path


def test_adding_a_competition_re_runs_only_its_own_stages(project):
    before = fingerprints(project)
    (project / "pipeline" / "competitions" / "shapes.yaml").write_text(SHAPES)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["competitions"].append("shapes")
    params["shapes"] = {**params["dogscats"], "data": {"source": "shapes.zip"}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    after = fingerprints(project)
    new = set(after) - set(before)
    assert new and all("@shapes" in name for name in new)
    # summary (the one table of every competition) and inputs (the one check of every competition, run on every
    # `dvc repro` anyway) list `competitions` and so run again, in a second each
    assert _changed(before, after) - new == {"inputs", "summary"}


def test_editing_a_record_re_runs_that_competitions_stages_only(project):
    before = fingerprints(project)
    record = project / "pipeline" / "competitions" / "statefarm.yaml"
    record.write_text(record.read_text().replace("test_images: 79726", "test_images: 79727"))
    changed = _changed(before, fingerprints(project))
    assert changed == {name for name in before if "@statefarm" in name}


def test_the_shipped_records_load_as_the_facts_the_stages_know():
    assert set(COMPETITIONS) >= {"dogscats", "statefarm", "digits"}
    statefarm = COMPETITIONS["statefarm"]
    assert statefarm.classes == tuple(f"c{i}" for i in range(10)) == statefarm.submission_columns
    assert statefarm.class_descriptions[1] == "texting, right" and not statefarm.hflip_keeps_label
    assert COMPETITIONS["digits"].pixels == (28, 28) and COMPETITIONS["dogscats"].binary


@pytest.mark.parametrize("text, expected", [
    (SHAPES + "metrc: f1_micro\n", "unknown key(s) metrc (the name is the file's stem); allowed: slug, title"),
    (SHAPES.replace("id_column: id\n", ""), "missing id_column"),
    (SHAPES.replace("submission_columns: [shape]", "submission_columns: [a, b]"),
     "a 'label' submission has 1 column(s) after the id; submission_columns has 2"),
    ("- a list\n", "expected a mapping of facts, got list"),
    ("slug: [\n", "is not valid YAML"),
])
def test_a_bad_record_names_its_file_and_the_fact(tmp_path, text, expected):
    path = tmp_path / "shapes.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_record(path)
    assert str(e.value).startswith(f"{path} (a competition record)") and expected in str(e.value)
