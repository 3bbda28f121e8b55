"""A curated run directory and the review app served for real on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from potstill.config import Config
from potstill.curate.stage import curate_stage
from potstill.records import Record, write_jsonl
from potstill.review.app import create_app
from tests.helpers.live_server import LiveServer

LABELS = ["sports", "tech", "politics"]
TEXTS = {
    "sports": ["Wigan beat Hull after extra time", "Ferrari on pole at Monza", "Murray through to the final",
               "Chelsea sign a new striker", "England win the Ashes"],
    "tech": ["New chip doubles battery life", "Broadband prices fall again", "Games console sales slump",
             "Mobile phone virus spreads", "Search engine buys a video site"],
    "politics": ["Minister resigns over expenses", "Election date set for May", "Party leader faces a revolt",
                 "Budget vote passes narrowly", "Councils warn on tax rises"],
}


def curated_config(tmp_path: Path) -> Config:
    run = tmp_path / "run"
    rows = [Record(messages=[{"role": "user", "content": t}], output=lab, valid=True, label=lab, slice=[lab])
            for lab, texts in TEXTS.items() for t in texts]
    write_jsonl(run / "teacher.jsonl", rows)
    cfg = Config(run_dir=str(run), task={"labels": LABELS}, curate={"val": 0, "test": 3},
                 teacher={"model": "tiny-teacher", "terms": "test terms"})
    curate_stage(cfg)
    return cfg


@pytest.fixture
def curated(tmp_path: Path) -> Config:
    return curated_config(tmp_path)


@pytest.fixture
def served(curated: Config) -> Iterator[LiveServer]:
    with LiveServer(create_app(curated.run_dir, sample=9)) as s:
        yield s
