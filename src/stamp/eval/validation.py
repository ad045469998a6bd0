"""The periodic validation of a training run: SynthRef val with free generation, scored as `stamp eval`
scores it. `stamp train` hands it to the trainer, which knows nothing of evaluation."""

from __future__ import annotations

from collections.abc import Callable


def synthref_validation(
    n_samples: int, seed: int, image_size_range: tuple[int, int]
) -> Callable[[object], dict[str, float]]:
    """`validate(model) -> metrics` on the first `n_samples` SynthRef val samples: pixel and patch cIoU,
    gIoU, N-acc / T-acc and VQA accuracy."""

    def validate(model) -> dict[str, float]:
        from stamp.data.synthref import SynthRef
        from stamp.eval.evaluate import evaluate_samples
        from stamp.inference import StampPredictor

        ds = SynthRef("val", seed=seed, image_size_range=tuple(image_size_range))
        samples = (ds[i] for i in range(n_samples))
        return evaluate_samples(StampPredictor(model), samples, total=n_samples, progress=False).metrics

    return validate


def validation_for(cfg) -> dict:
    """The trainer's `validate` keyword for a training config (`stamp.train.config.TrainConfig`): SynthRef
    val on `data.val_samples` samples every `run.eval_every` steps; nothing when that is 0. What
    `stamp train` passes, for scripts that train as it does."""
    if not cfg.run.eval_every:
        return {}
    data = cfg.data
    return {"validate": synthref_validation(data.val_samples, data.seed, tuple(data.image_size_range))}
