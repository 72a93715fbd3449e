"""Run logging: third-party loggers held at WARNING on the handlers, calm progress bars off a TTY,
the Hydra job (and its log file) named `etagent`."""

from __future__ import annotations

import logging
import logging.config
import subprocess
import sys

import yaml

from conftest import CONF, compose
from etagent.utils.logs import ThirdPartyFilter


def test_filter_keeps_our_info_and_third_party_warnings():
    f = ThirdPartyFilter("WARNING")

    def rec(name, level):
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    assert f.filter(rec("etagent", logging.INFO)) and f.filter(rec("etagent.train.sft", logging.DEBUG))
    assert f.filter(rec("__main__", logging.INFO))
    assert not f.filter(rec("bm25s", logging.DEBUG)) and not f.filter(rec("etagentx", logging.INFO))
    assert f.filter(rec("bm25s", logging.WARNING)) and f.filter(rec("transformers.x", logging.ERROR))


def test_job_logging_config_drops_a_library_that_reraises_its_level(tmp_path):
    spec = yaml.safe_load((CONF / "hydra" / "job_logging" / "etagent.yaml").read_text())
    spec["handlers"]["file"]["filename"] = str(tmp_path / "etagent.log")
    spec["handlers"]["console"]["stream"] = "ext://sys.stderr"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(spec)
        import bm25s  # noqa: F401  sets logging.getLogger("bm25s") to DEBUG on import

        noisy = logging.getLogger("bm25s")
        noisy.setLevel(logging.DEBUG)  # as its import does (it may already be imported)
        noisy.debug("Building index from tokens")
        noisy.warning("a real warning")
        logging.getLogger("etagent").info("seed      done in 1.0s")
        for h in root.handlers:
            h.flush()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    text = (tmp_path / "etagent.log").read_text()
    assert "[etagent][INFO] - seed      done in 1.0s" in text
    assert "a real warning" in text and "Building index" not in text


def _bar_into_file(tmp_path, loop: str) -> str:
    """stderr of a fresh interpreter that calms the bars, then runs ``loop`` with tqdm, into a file."""
    code = ("from etagent.utils.logs import bar_step, calm_progress_bars\n"
            "assert calm_progress_bars(interval=60)\n"
            "import time\nfrom tqdm.auto import tqdm\n" + loop)
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        subprocess.run([sys.executable, "-c", code], stderr=fh, check=True, env={"PATH": "/usr/bin:/bin"})
    return err.read_text()


def test_progress_bars_redraw_rarely_into_a_file(tmp_path):
    text = _bar_into_file(tmp_path, "for _ in tqdm(range(200)):\n    time.sleep(0.005)\n")
    assert "200/200" in text
    assert text.count("\r") <= 3, text  # the first draw and the final one; ~40 at tqdm's default 0.1 s


def test_a_bar_with_a_postfix_per_step_also_redraws_rarely(tmp_path):
    # set_postfix redraws by default: the SFT and GRPO bars wrote one line per step into log files
    text = _bar_into_file(tmp_path, "bar = tqdm(total=200)\n"
                          "for i in range(200):\n    time.sleep(0.005)\n    bar_step(bar, loss=f'{i:.4f}')\n"
                          "bar.close()\n")
    assert "200/200" in text and "loss=199.0000" in text
    assert text.count("\r") <= 3, text


def test_progress_bars_untouched_on_a_tty(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    from etagent.utils.logs import calm_progress_bars

    assert calm_progress_bars(stream=Tty()) is False
    import os

    assert "TQDM_MININTERVAL" not in os.environ


def test_hydra_job_is_named_etagent():
    from hydra import compose as hcompose

    compose([])  # initialises Hydra on conf/
    cfg = hcompose(config_name="config", return_hydra_config=True)
    assert cfg.hydra.job.name == "etagent"
    assert cfg.hydra.job_logging.filters.third_party["()"] == "etagent.utils.logs.ThirdPartyFilter"
    from omegaconf import OmegaConf

    handlers = OmegaConf.to_container(cfg.hydra.job_logging.handlers, resolve=False)
    assert handlers["file"]["filename"].endswith("${hydra.job.name}.log")
