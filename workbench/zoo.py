"""Sample models: architectures, their registry, and loading of their shipped weights.

Every sample takes digits shaped (N, 1, 8, 8) in [0, 1] and returns 10 class scores. Weights ship as
safetensors next to a JSON card in `sample_models/`, with an early-training checkpoint
(`<name>.rewind.safetensors`) for weight rewinding; `sample_models/train.py` reproduces all three.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.settings import get_settings

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {}


def architecture(name: str) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    def register(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        ARCHITECTURES[name] = factory
        return factory

    return register


class DigitsMLP(nn.Module):
    """LeNet-300-100 on 8x8 digits: 64-300-100-10."""

    def __init__(self, hidden: tuple[int, int] = (300, 100)) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(self.flatten(x)))
        return self.fc3(torch.relu(self.fc2(x)))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitsCNN(nn.Module):
    """Three conv+BatchNorm+ReLU blocks with two max-pools and a linear head."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(1, width), _conv_block(width, 2 * width), nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Attention(nn.Module):
    """Multi-head self-attention written out (qkv + proj Linears) so heads stay visible to tools."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """A tiny vision transformer: 2x2 patches -> 16 tokens, 2 encoder blocks, mean-pooled head."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, mlp: int = 128, patch: int = 2) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, (8 // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


architecture("digits-mlp")(DigitsMLP)
architecture("digits-cnn")(DigitsCNN)
architecture("digits-vit")(DigitsViT)


def sample_names() -> list[str]:
    return sorted(ARCHITECTURES)


def sample_card(name: str) -> dict:
    path = get_settings().samples_dir / f"{name}.json"
    if not path.is_file():
        raise WorkbenchError(f"sample model '{name}' has no card at {path}")
    return json.loads(path.read_text())


def build(arch: str) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise WorkbenchError(f"unknown architecture '{arch}' (known: {', '.join(sample_names())})")
    return ARCHITECTURES[arch]()


def load_weights(module: nn.Module, path: Path, source: str, keep: frozenset[str] = frozenset()) -> nn.Module:
    """Load safetensors into `module`, naming missing, unexpected or mis-shaped tensors. Tensors named in
    `keep` are neither read nor checked: they stay as they are in `module`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = {k: v for k, v in load_file(str(path)).items() if k not in keep}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WorkbenchError(f"{source}: not a readable safetensors file ({exc})") from None
    expected = {k: v for k, v in module.state_dict().items() if k not in keep}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        detail = "; ".join(
            part for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(extra[:3])}" if extra else "",
                f"shape mismatch in {', '.join(wrong[:3])}" if wrong else "",
            ) if part
        )
        raise WorkbenchError(f"{source}: weights do not fit the architecture ({detail})")
    module.load_state_dict(state, strict=not keep)
    return module.eval()


def load_sample(name: str) -> nn.Module:
    """The trained sample model `name`, in eval mode."""
    path = get_settings().samples_dir / f"{name}.safetensors"
    if not path.is_file():
        raise WorkbenchError(f"sample model '{name}': weights missing at {path} (run sample_models/train.py)")
    return load_weights(build(name), path, name)


def rewind_checkpoint(name: str) -> Path | None:
    """The sample's early-training weights (`<name>.rewind.safetensors`, written by train.py), if present."""
    path = get_settings().samples_dir / f"{name}.rewind.safetensors"
    return path if path.is_file() else None
