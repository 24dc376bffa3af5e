"""The generated parts of the docs say what the code says (docs/gen.py makes them), and every
``KTRDR_*`` variable the code reads is documented somewhere."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

from tests.conftest import ROOT
from tests.docs.blocks import doc_pages

# Where the platform's own variables are read (the tests' stand-ins and switches are theirs).
PRODUCT = ("ktrdr", "coordinator", "worker_backtest", "worker_training", "host_gpu", "host_ib", "subjects", "deploy",
           "nats", "bench")
SOURCES = ("*.py", "*.yaml", "*.conf", "*.sh", "Dockerfile")
VARIABLE = re.compile(r"\bKTRDR_[A-Z0-9_]*[A-Z0-9]\b")
NOT_VARIABLES = {"KTRDR_X"}  # bench/fleet.py's placeholder in `--worker-env KTRDR_X=VALUE`


def _gen() -> ModuleType:
    # The generator imports the CLI, which imports ib_insync, whose import asks for the current event
    # loop: the tests that call it are coroutines, so that one is there whatever ran before them.
    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_generated_docs_are_what_the_code_makes_them() -> None:
    stale = _gen().stale()
    assert stale == [], f"{', '.join(stale)}: stale; run `python docs/gen.py` and commit what it writes"


async def test_each_generated_part_is_in_its_page_once() -> None:
    gen = _gen()
    for name, (page, _) in gen.PARTS.items():
        text = (ROOT / page).read_text()
        assert text.count(f"<!-- generated: {name} -->") == 1, page


async def test_the_configuration_table_has_every_settings_field() -> None:
    gen = _gen()
    table = gen.configuration()
    for cls, _ in gen._settings_classes():
        for name in cls.model_fields:
            assert f"`KTRDR_{name.upper()}`" in table, f"{cls.__name__}.{name}"


def test_every_variable_the_code_reads_is_documented() -> None:
    read = {v for folder in PRODUCT for pattern in SOURCES for path in (ROOT / folder).rglob(pattern)
            for v in VARIABLE.findall(path.read_text(errors="replace"))} - NOT_VARIABLES
    docs = "\n".join(page.read_text() for page in doc_pages())
    assert sorted(v for v in read if v not in docs) == []
