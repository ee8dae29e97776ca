"""Type stubs of the native extension (results come back as JSON text; the package turns them
into dicts)."""

from os import PathLike
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

class Model:
    @staticmethod
    def from_script(
        data: bytes,
        name: str,
        in_channels: int,
        height: int,
        width: int,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        num_classes: Optional[int] = None,
        device: str = "cpu",
    ) -> "Model": ...
    @staticmethod
    def from_path(
        path: Union[str, PathLike],
        in_channels: int,
        height: int,
        width: int,
        arch: Optional[str] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        num_classes: Optional[int] = None,
        device: str = "cpu",
    ) -> "Model": ...
    @staticmethod
    def from_state_dict(arch: str, state_dict: List[Tuple[str, torch.Tensor]], device: str = "cpu") -> "Model": ...
    def state_dict(self) -> List[Tuple[str, torch.Tensor]]: ...
    def logits(self, x: torch.Tensor) -> torch.Tensor: ...
    def copy(self) -> "Model": ...
    @property
    def notes(self) -> List[str]: ...
    def spec_json(self) -> str: ...
    def save_torchscript(self, path: Union[str, PathLike]) -> None: ...
    def set_exec(self, precision: str = "fp32", channels_last: bool = False) -> None: ...

def attack(
    model: Model, x: torch.Tensor, y: torch.Tensor, attack: str, eps: Optional[float], settings: str,
    batch_size: int, seed: int, attack_all: bool, progress: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, str, str]: ...
def robust_eval(
    model: Model, x: torch.Tensor, y: torch.Tensor, suite: str, norm: str, eps: float, batch_size: int,
    seed: int, settings: str,
) -> str: ...
def unlearn(
    model: Model, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    forget: List[int], method: str, settings: str, profile: str, seed: int, recipe: str, progress: bool,
) -> Tuple[Model, str]: ...
def bench_unlearn(
    preset: str, settings: str, profile: Optional[str], data_dir: Optional[Union[str, PathLike]], fresh: bool,
    progress: bool,
) -> str: ...
def prune(
    model: Model, method: str, sparsity: float, scope: str, x: Optional[torch.Tensor] = None,
    y: Optional[torch.Tensor] = None, seed: int = 0,
) -> Tuple[List[Tuple[str, torch.Tensor]], str]: ...
def zo_minimize(
    f: Callable[[torch.Tensor], float], x0: torch.Tensor, estimator: str, optimizer: str, lr: float, steps: int,
    budget: Optional[int], q: int, mu: float, seed: int,
) -> Tuple[torch.Tensor, torch.Tensor, str]: ...
def built_libtorch() -> str: ...
