import torch

from op4ksr.train.checkpoint import (
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)


def _opt_with_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    sched.step()
    return model, opt, sched


def test_round_trip_restores_optimizer_scheduler_and_rng(tmp_path):
    model, opt, sched = _opt_with_state()
    gen = torch.Generator().manual_seed(3)
    torch.randn(2, generator=gen)
    path = save_checkpoint(checkpoint_dir(tmp_path, 7), step=7, model_state=model.state_dict(),
                           optimizers={"model": opt}, schedulers={"model": sched}, generator=gen,
                           extra={"stage": {"latent_shift": 0.25}})
    expected_noise = torch.randn(3, generator=gen)
    expected_global = torch.rand(2)

    model2, opt2, sched2 = _opt_with_state()
    gen2 = torch.Generator().manual_seed(99)
    torch.manual_seed(1234)
    step, state, meta = load_checkpoint(path, optimizers={"model": opt2}, schedulers={"model": sched2}, generator=gen2)
    assert step == 7 and meta["stage"]["latent_shift"] == 0.25
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for idx in s1["state"]:
        for key, value in s1["state"][idx].items():
            assert torch.equal(torch.as_tensor(s2["state"][idx][key]), torch.as_tensor(value))
    assert sched2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]
    assert torch.equal(torch.randn(3, generator=gen2), expected_noise)
    assert torch.equal(torch.rand(2), expected_global)
    assert not any(p.suffix in {".pt", ".bin", ".pkl"} for p in path.iterdir())


def test_list_and_prune(tmp_path):
    model, opt, sched = _opt_with_state()
    for step in (5, 10, 15):
        save_checkpoint(checkpoint_dir(tmp_path, step), step=step, model_state=model.state_dict(),
                        optimizers={"model": opt}, schedulers={"model": sched}, generator=torch.Generator())
    (tmp_path / "checkpoints" / "step-0000020.tmp").mkdir()  # an interrupted write is ignored
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000005", "step-0000010", "step-0000015"]
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000010", "step-0000015"]
