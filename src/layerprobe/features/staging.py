"""Batches onto the device: on CUDA, the host-to-device copy is issued by the loader's producer
thread, from pinned memory, non-blocking on a side stream, so it overlaps the consumer's step;
an event tells the consumer's stream when the copy is done. On the CPU, tensors share the
batch buffers' memory (no copy)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, np.ndarray]


class DeviceStager:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._copy_stream: Any = None

    def stage(self, batch: tuple[Any, ...]) -> tuple[Batch, Any]:
        """The batch as tensors on the device (CUDA: the copy issued on a side stream), and the
        event the consumer waits for (None on the CPU)."""
        if self.device.type != "cuda":
            return self.emit(batch), None
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            staged = self.emit(batch)
            event = torch.cuda.Event()
            event.record(self._copy_stream)
        return staged, event

    def receive(self, staged: Batch, event: Any) -> Batch:
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for tensor in staged[:3]:
                if tensor is not None:  # allocated on the side stream, used on this one
                    tensor.record_stream(stream)
        return staged

    def emit(self, batch: tuple[Any, ...]) -> Batch:
        feats, cls, labels, rows = batch
        return (self.to_device(feats), self.to_device(cls) if cls is not None else None, self.to_device(labels), rows)

    def to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(array, torch.Tensor):  # resident on the GPU already
            return array
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor
