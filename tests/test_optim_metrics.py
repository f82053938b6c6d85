import copy
import json
import math
import time

import pytest
import torch

from vt_core.metrics import MetricsLogger
from vt_core.optim import MasterAdamW, lr_at


def test_lr_schedule_warmup_cosine_floor():
    kw = dict(peak_lr=1.0, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_master_adamw_bf16_follows_fp32_adamw_exactly():
    torch.manual_seed(0)
    w32 = torch.nn.Parameter(torch.randn(5, 3))
    w16 = torch.nn.Parameter(w32.detach().bfloat16())
    ref_master = torch.nn.Parameter(w16.detach().float())
    opt = MasterAdamW([w16], lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW([ref_master], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(5, 3)
        w16.grad = g.bfloat16()
        ref_master.grad = g.bfloat16().float()
        opt.step()
        ref.step()
        assert torch.equal(opt.masters[0], ref_master.detach())
        assert torch.equal(w16.detach(), ref_master.detach().bfloat16())


def test_master_adamw_clips_and_restores_state():
    w = torch.nn.Parameter(torch.ones(4))
    opt = MasterAdamW([w], lr=0.1)
    w.grad = torch.full((4,), 10.0)
    norm = opt.step(max_grad_norm=1.0)
    assert norm == pytest.approx(20.0)
    state = copy.deepcopy(opt.state_dict())  # as through torch.save / torch.load
    w2 = torch.nn.Parameter(torch.zeros(4))
    opt2 = MasterAdamW([w2], lr=0.1)
    opt2.load_state_dict(state)
    assert torch.equal(w2.detach(), w.detach())
    w.grad = torch.ones(4)
    w2.grad = torch.ones(4)
    opt.step()
    opt2.step()
    assert torch.equal(w2.detach(), w.detach())


def test_metrics_logger_writes_jsonl_tb_png(tmp_path):
    log = MetricsLogger(tmp_path, total_steps=3, progress=False, plot_every=2)
    for step in range(3):
        log.log(step, {"loss": 1.0 / (step + 1), "reward": step * 0.1, "note": "x"})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and math.isclose(rows[2]["loss"], 1 / 3)
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((tmp_path / "tb").iterdir())


def test_metrics_logger_redraws_no_sooner_than_its_interval(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(MetricsLogger, "plot", lambda self, path=None: drawn.append(len(self.history)) or
                        setattr(self, "_last_plot", time.perf_counter()))
    log = MetricsLogger(tmp_path, progress=False, tensorboard=False, plot_every=2, plot_min_interval_s=3600)
    for step in range(6):
        log.log(step, {"loss": 1.0})
    assert drawn == [2]  # steps 4 and 6 came within the hour
    log.plot_min_interval_s = 0.0
    log.log(6, {"loss": 1.0})
    log.log(7, {"loss": 1.0})
    assert drawn == [2, 8]
    log.close()
    assert drawn == [2, 8, 8]  # and once more at the end
