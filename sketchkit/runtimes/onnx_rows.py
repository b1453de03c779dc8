"""The engine's row table (`sketchkit.rows`) in onnxruntime's device memory.

`DeviceRows`: the live rows as OrtValues of exactly B rows; a step binds them as inputs and takes
its outputs as the next step's inputs, and dropped or admitted rows are applied by one small
graph at the next step. `GraphRows`: the same table in fixed-capacity slots (64, 256, ... rows),
two buffers per column that steps alternate between, so that every step of a capacity is the
same graph on the same addresses: onnxruntime captures it as a CUDA graph once and replays it,
one launch a step instead of one per node. A finished row only frees its slot (it keeps
computing until the slot is reused); admissions and capacity changes are one small graph each.
Both copy only the step's points [B, 5] to the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sketchkit.errors import ModelError
from sketchkit.graphs import DECODER_STEP_DRAW, DECODER_STEP_DRAW_UNCOND
from sketchkit.runtimes.base import Runtime

if TYPE_CHECKING:
    import onnxruntime as ort


# the table's columns are the step graph's inputs (`sketchkit.graphs`: one contract for both)
_COLUMN_TYPES = {t.name: t.dtype for t in DECODER_STEP_DRAW.inputs}


def _columns(runtime: Runtime) -> tuple[str, ...]:
    graph = DECODER_STEP_DRAW if runtime.info.dims.vae else DECODER_STEP_DRAW_UNCOND
    return tuple(t.name for t in graph.inputs)


def _column_graph(name: str, columns: tuple[str, ...], given: list[tuple[str, list[Any]]], nodes_of: Any) -> bytes:
    """A bookkeeping graph over the row table's columns: inputs `given` (int64, by name and dims),
    then each column X and X_new (the admitted rows, from the host), output X_out by the nodes
    `nodes_of(X)` returns."""
    from onnx import TensorProto, helper

    elem = {"float32": TensorProto.FLOAT, "bool": TensorProto.BOOL, "uint64": TensorProto.UINT64}
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n, dims in given]
    nodes, outputs = [], []
    for c in columns:
        t = elem[_COLUMN_TYPES[c]]
        shape: list[int | str | None] = ["B"] if c in ("greedy", "counter") else ["B", None]
        inputs += [helper.make_tensor_value_info(c, t, shape), helper.make_tensor_value_info(f"{c}_new", t, shape)]
        outputs.append(helper.make_tensor_value_info(f"{c}_out", t, shape))
        nodes += nodes_of(c)
    graph = helper.make_graph(nodes, name, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _table_graph(columns: tuple[str, ...]) -> bytes:
    """DeviceRows' bookkeeping: X_out = Concat(Gather(X, keep), X_new), dropping finished rows and
    appending admitted ones in one evaluation on the device."""
    from onnx import helper

    return _column_graph("row_table", columns, [("keep", ["K"])], lambda c: [
        helper.make_node("Gather", [c, "keep"], [f"{c}_kept"], axis=0),
        helper.make_node("Concat", [f"{c}_kept", f"{c}_new"], [f"{c}_out"], axis=0),
    ])  # fmt: skip


class DeviceRows:
    """The engine's row table (`sketchkit.rows`) as onnxruntime OrtValues on the step's device.

    Between steps every column stays where the graph runs: a step binds them as inputs and
    takes its outputs (points, state, counters) as the next step's inputs, copying only the
    points [B, 5] to the host. Dropped and admitted rows are applied lazily, at the next step,
    by one small graph (`_table_graph`) on the device: the host uploads only the new rows.
    """

    def __init__(self, runtime: Runtime, session: ort.InferenceSession, device: str, device_id: int = 0) -> None:
        import onnxruntime as ort

        self.runtime, self.session, self.device, self.device_id = runtime, session, device, device_id
        self.names = _columns(runtime)
        self.columns: dict[str, ort.OrtValue] = {}
        self._rows = 0
        self._keep: np.ndarray | None = None  # rows to keep (pending)
        self._new: list[dict[str, np.ndarray]] = []  # rows to append (pending)
        from sketchkit.onnx_session import open_session

        self._table = open_session(_table_graph(self.names), 1, session.get_providers())
        self._ort = ort

    def __len__(self) -> int:
        return self._rows

    def append(self, columns: dict[str, np.ndarray]) -> None:
        self._new.append({c: columns[c] for c in self.names})
        self._rows += len(columns["prev"])

    def keep(self, index: np.ndarray) -> None:
        index = np.asarray(index, np.int64)
        if self._new:  # keep among old and pending new rows alike: apply the pending ones first
            self._apply()
        self._keep = index if self._keep is None else self._keep[index]
        self._rows = len(index)

    def _apply(self) -> None:
        """Bring the pending drops and appends onto the device (one graph evaluation)."""
        new = {c: np.concatenate([n[c] for n in self._new]) for c in self.names} if self._new else None
        if self.columns and (self._keep is None or len(self._keep)):
            binding = self._table.io_binding()
            keep = self._keep if self._keep is not None else np.arange(self.columns["prev"].shape()[0])
            binding.bind_cpu_input("keep", np.ascontiguousarray(keep, np.int64))
            for c in self.names:
                old = self.columns[c]
                binding.bind_ortvalue_input(c, old)
                rows = new[c] if new is not None else np.zeros((0, *old.shape()[1:]), _COLUMN_TYPES[c])
                binding.bind_cpu_input(f"{c}_new", np.ascontiguousarray(rows))
                binding.bind_output(f"{c}_out", self.device, self.device_id)
            self._table.run_with_iobinding(binding)
            self.columns = dict(zip(self.names, binding.get_outputs(), strict=True))
        elif new is not None:  # an empty table takes the new rows as they are
            self.columns = {c: self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), self.device, self.device_id) for c, v in new.items()}
        else:
            self.columns = {}
        self._keep, self._new = None, []

    def step(self) -> np.ndarray:
        try:
            if self._keep is not None or self._new:
                self._apply()
            binding = self.session.io_binding()
            for c in self.names:
                binding.bind_ortvalue_input(c, self.columns[c])
            for out in ("point", "next_state", "next_counter"):
                binding.bind_output(out, self.device, self.device_id)
            self.session.run_with_iobinding(binding)
        except ModelError:
            raise
        except Exception as e:  # onnxruntime's own (out of memory, a kernel's failure): one line
            raise ModelError(_failed(self.runtime, e)) from None
        point, state, counter = binding.get_outputs()
        self.columns.update(prev=point, state=state, counter=counter)
        return point.numpy()


def _slots_graph(columns: tuple[str, ...]) -> bytes:
    """GraphRows' bookkeeping: X_out = ScatterND(Gather(X, src), slots, X_new): `src` lays the old
    slots out at a (new) capacity, then the admitted rows go into their slots."""
    from onnx import helper

    return _column_graph("row_slots", columns, [("src", ["C"]), ("slots", ["K", 1])], lambda c: [
        helper.make_node("Gather", [c, "src"], [f"{c}_laid"], axis=0),
        helper.make_node("ScatterND", [f"{c}_laid", "slots", f"{c}_new"], [f"{c}_out"]),
    ])  # fmt: skip


def with_passthrough(model: bytes, names: tuple[str, ...]) -> bytes:
    """The step graph with `<c>_out` = Identity(c) outputs for the columns a step does not change
    (z, temperature, greedy): GraphRows' next buffers then hold every column."""
    import onnx
    from onnx import helper

    m = onnx.load_from_string(model)
    for c in names:
        given = next(i for i in m.graph.input if i.name == c)
        m.graph.node.append(helper.make_node("Identity", [c], [f"{c}_out"], name=f"passthrough/{c}"))
        out = m.graph.output.add()
        out.CopyFrom(given)
        out.name = f"{c}_out"
    return m.SerializeToString()


CAPACITIES = (64, 256, 1024, 4096, 16384, 32768, 65536, 131072)


def _failed(runtime: Runtime, e: BaseException) -> str:
    return f"{runtime.info.name}: decoder_step_draw failed: {(str(e).strip() or type(e).__name__).splitlines()[0][:300]}"
_STEP_OUT = {"prev": "point", "state": "next_state", "counter": "next_counter"}  # column -> step output


class GraphRows:
    """The row table in fixed-capacity slots, stepped by a captured CUDA graph (module docstring).

    `slot[i]` is the slot of live row i. A capacity has two buffer sets; a step reads set p and
    writes set 1 - p (graph id 1 + 2 k + p for capacity k), so the addresses a graph was captured
    with never change. `capture=False` runs the same bookkeeping without graphs (CPU tests)."""

    def __init__(
        self, runtime: Runtime, session: ort.InferenceSession, device: str, device_id: int = 0, capture: bool = True
    ) -> None:
        import onnxruntime as ort

        from sketchkit.onnx_session import open_session

        self.runtime, self.session, self.device, self.device_id, self.capture = runtime, session, device, device_id, capture
        info = runtime.info
        self.names = _columns(runtime)
        self.widths = {"prev": 5, "z": info.dims.z_size, "state": info.dims.state_size, "temperature": 2}
        self._slots_session = open_session(_slots_graph(self.names), 1, session.get_providers())
        self._ort = ort
        self.slot = np.zeros(0, np.int64)  # live row -> slot
        self.free: list[int] = []
        self.capacity = 0
        self.parity = 0
        self._sets: dict[int, list[dict[str, Any]]] = {}  # capacity -> two buffer sets
        self._bindings: dict[tuple[int, int], Any] = {}
        self._new: list[dict[str, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self.slot) + sum(len(n["prev"]) for n in self._new)

    def append(self, columns: dict[str, np.ndarray]) -> None:
        self._new.append({c: columns[c] for c in self.names})

    def keep(self, index: np.ndarray) -> None:
        if self._new:
            self._apply()
        index = np.asarray(index, np.int64)
        gone = np.ones(len(self.slot), bool)
        gone[index] = False
        self.free += self.slot[gone].tolist()
        self.slot = self.slot[index]

    def _buffers(self, capacity: int) -> list[dict[str, Any]]:
        if capacity not in self._sets:
            def empty(c: str) -> Any:
                shape = [capacity] + ([self.widths[c]] if c in self.widths else [])
                return self._ort.OrtValue.ortvalue_from_shape_and_type(shape, np.dtype(_COLUMN_TYPES[c]).type, self.device, self.device_id)
            self._sets[capacity] = [{c: empty(c) for c in self.names} for _ in range(2)]
        return self._sets[capacity]

    def _apply(self) -> None:
        """Admit the pending rows into free slots, at a capacity that fits the live rows."""
        new = {c: np.concatenate([n[c] for n in self._new]) for c in self.names} if self._new else None
        k = len(new["prev"]) if new is not None else 0
        live = len(self.slot)
        want = next((c for c in CAPACITIES if c >= live + k), None)
        if want is None:
            raise ModelError(f"more than {CAPACITIES[-1]} rows in one step")
        if self.capacity == 0 or want > self.capacity or (want * 4 <= self.capacity and live):  # grow, or shrink to fit
            src = np.zeros(want, np.int64)
            if want > self.capacity:  # grow: every slot stays where it is
                src[: self.capacity] = np.arange(self.capacity)
                self.free += range(self.capacity, want)
            else:  # shrink: the live rows move to slots 0 .. live-1
                src[:live] = self.slot
                self.slot = np.arange(live, dtype=np.int64)
                self.free = list(range(live, want))
        else:
            src = None
        if new is None and src is None:
            return
        slots = np.array(self.free[:k], np.int64)
        self.free = self.free[k:]
        target_capacity = want if src is not None else self.capacity
        target = self._buffers(target_capacity)[1 - self.parity if src is None else 0]
        binding = self._slots_session.io_binding()
        binding.bind_cpu_input("src", src if src is not None else np.arange(self.capacity, dtype=np.int64))
        binding.bind_cpu_input("slots", slots[:, None])
        for c in self.names:
            if self.capacity:
                binding.bind_ortvalue_input(c, self._sets[self.capacity][self.parity][c])
            else:  # nothing yet: lay out zeros
                shape = [1] + ([self.widths[c]] if c in self.widths else [])
                binding.bind_cpu_input(c, np.zeros(shape, _COLUMN_TYPES[c]))
            rows = new[c] if new is not None else np.zeros((0, *([self.widths[c]] if c in self.widths else [])), _COLUMN_TYPES[c])
            binding.bind_cpu_input(f"{c}_new", np.ascontiguousarray(rows, _COLUMN_TYPES[c]))
            binding.bind_ortvalue_output(f"{c}_out", target[c])
        self._slots_session.run_with_iobinding(binding)
        self.parity = 1 - self.parity if src is None else 0
        self.capacity = target_capacity
        self.slot = np.concatenate([self.slot, slots])
        self._new = []

    def _binding(self) -> Any:
        key = (self.capacity, self.parity)
        if key not in self._bindings:
            sets = self._buffers(self.capacity)
            read, write = sets[self.parity], sets[1 - self.parity]
            binding = self.session.io_binding()
            for c in self.names:
                binding.bind_ortvalue_input(c, read[c])
                binding.bind_ortvalue_output(_STEP_OUT.get(c, f"{c}_out"), write[c])
            self._bindings[key] = binding
        return self._bindings[key]

    def step(self) -> np.ndarray:
        try:
            if self._new or (self.capacity > CAPACITIES[0] and len(self.slot) * 4 <= self.capacity):
                self._apply()
            binding = self._binding()
            run = self._ort.RunOptions()
            if self.capture:
                run.add_run_config_entry("gpu_graph_id", str(1 + 2 * CAPACITIES.index(self.capacity) + self.parity))
            self.session.run_with_iobinding(binding, run)
        except ModelError:
            raise
        except Exception as e:  # onnxruntime's own (out of memory, a kernel's failure): one line
            raise ModelError(_failed(self.runtime, e)) from None
        self.parity = 1 - self.parity
        return self._sets[self.capacity][self.parity]["prev"].numpy()[self.slot]
