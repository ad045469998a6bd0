"""The training config schema. YAML instances live in `configs/`; see `stamp train --help`."""

from __future__ import annotations

from dataclasses import dataclass, field

from stamp.model.attention import ATTENTION_MODES, SUPPORTED_ATTN_IMPLEMENTATIONS
from stamp.model.build import FAMILIES, Architecture
from stamp.model.positions import POSITION_MODES
from stamp.model.settings import MASK_EMBEDDING_MODES
from stamp.model.settings import check_choice as _choice


@dataclass
class LoraConfig:
    """LoRA through peft on the language model; the head and embeddings stay fully trained."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    rslora: bool = True
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    modules_to_save: list[str] = field(default_factory=lambda: ["classifier", "embed_tokens", "lm_head"])


@dataclass
class ModelConfig(Architecture):
    """Which network to train: a new one from scratch (of the `Architecture` sizes it inherits:
    hidden_size, num_layers, ..., vision_depth, ...) or a pretrained directory."""

    init: str = "scratch"
    """"scratch": build from the sizes; "pretrained": load `path` (any layout StampModel loads)."""
    path: str | None = None
    """Model directory for init=pretrained."""
    tokenizer: str | None = None
    """Tokenizer directory for init=scratch (default: the shipped SynthRef BPE tokenizer)."""
    position_mode: str = "grid"
    attention_mode: str = "hybrid"
    mask_embedding: str = "visual"
    attn_implementation: str = "sdpa"
    min_cells: int | None = None
    """Smallest image after resizing, in merged 28x28 cells (64 = 224x224). None: 64 from scratch, the
    checkpoint's own range when starting from a pretrained model (set it to train at another size)."""
    max_cells: int | None = None
    """Largest image after resizing, in cells (256 = 448x448). None: 256 from scratch, the checkpoint's."""
    system_prompt: str | None = None
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None

    def __post_init__(self) -> None:
        _choice("model.init", self.init, ("scratch", "pretrained"))
        _choice("model.family", self.family, FAMILIES)
        _choice("model.position_mode", self.position_mode, POSITION_MODES)
        _choice("model.attention_mode", self.attention_mode, ATTENTION_MODES)
        _choice("model.mask_embedding", self.mask_embedding, MASK_EMBEDDING_MODES)
        _choice("model.attn_implementation", self.attn_implementation, SUPPORTED_ATTN_IMPLEMENTATIONS)
        if self.init == "pretrained" and not self.path:
            raise ValueError("model.path is required when model.init is 'pretrained'")
        if self.init == "scratch" and sum(self.mrope_section) * 2 * self.num_heads != self.hidden_size:
            raise ValueError(
                f"model.mrope_section {self.mrope_section} must sum to hidden_size/num_heads/2 = "
                f"{self.hidden_size // self.num_heads // 2}"
            )
        for name in ("min_cells", "max_cells"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_cells is not None and self.max_cells is not None and self.min_cells > self.max_cells:
            raise ValueError("need model.min_cells <= model.max_cells")


@dataclass
class DataSource:
    """One entry of the training mixture."""

    kind: str = "synthref"
    """synthref, refcoco, refcoco+, refcocog, refclef, grefcoco, reasonseg or llava."""
    path: str | None = None
    """Root directory (not used by synthref)."""
    split: str = "train"
    weight: float = 1.0
    image_root: str | None = None


@dataclass
class DataConfig:
    sources: list[DataSource] = field(default_factory=lambda: [DataSource()])
    """The training mixture (weights are relative)."""
    task_weights: dict[str, float] | None = None
    """SynthRef task weights (None: SynthRef's defaults)."""
    vqa_kind_weights: dict[str, float] | None = None
    """SynthRef VQA question kinds' weights: count, colour, shape, exists, position (None: uniform)."""
    image_size_range: list[int] = field(default_factory=lambda: [224, 448])
    """SynthRef image width/height range in pixels."""
    seed: int = 0
    val_samples: int = 200
    """SynthRef val samples used for the periodic validation."""
    num_workers: int = 0
    """Worker processes that build batches ahead of the training step (0: in the training process).
    Batches depend only on their sample indices, so any number gives the same run. On a GPU the data
    (rendering, image processing) is the bottleneck of small models: use most of the CPU cores."""

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError("data.num_workers must be >= 0")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    schedule: str = "cosine"
    """cosine, linear or constant (after the warm-up)."""
    warmup_steps: int = 150
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr` (cosine and linear)."""
    grad_clip: float = 1.0
    batch_size: int = 16
    """Samples per process per micro-step."""
    grad_accum: int = 1

    def __post_init__(self) -> None:
        _choice("optim.schedule", self.schedule, ("cosine", "linear", "constant"))
        if self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("optim.lr must be > 0, batch_size and grad_accum >= 1")


@dataclass
class LossConfig:
    text: float = 1.0
    bce: float = 1.0
    """The paper sums BCE and Dice with weight 1; the authors' released checkpoints used 0.3 / 0.7."""
    dice: float = 1.0
    target_threshold: float | None = 0.5
    """Cells with a foreground area fraction >= this are positive targets (None: soft targets)."""


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    steps: int = 1000
    precision: str = "bf16"
    """bf16 (autocast) or fp32."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500
    """Validation on SynthRef val every N steps (0: never)."""
    save_every: int = 250
    keep_checkpoints: int = 2
    max_minutes: float = 0.0
    """Stop (after saving) when this much wall time has passed (0: no limit) -- for resumable chunks."""
    stop_at_step: int = 0
    """Stop (after saving) once this step is done, with the learning-rate schedule still laid out over
    run.steps (0: run all steps). Reproduces a run that a time limit cut, independent of the hardware."""

    def __post_init__(self) -> None:
        _choice("run.precision", self.precision, ("bf16", "fp32"))
        if self.steps < 1:
            raise ValueError("run.steps must be >= 1")
        if not 0 <= self.stop_at_step <= self.steps:
            raise ValueError(
                f"run.stop_at_step must be between 0 and run.steps ({self.steps}), got {self.stop_at_step}"
            )


@dataclass
class TrainConfig:
    """Everything `stamp train` needs. Sections: model, data, optim, loss, run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
