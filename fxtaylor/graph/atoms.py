"""Channel atoms: the bookkeeping under the channel graph.

Every prunable axis of every parameter-holding module gets a *space*: a range of integer ids
("atoms"), one per channel. A conv's output channels are a space, so are its input channels, a
batch norm's features and each dimension of a free ``nn.Parameter``. While the model is run
through :mod:`fxtaylor.graph.propagate`, each tensor is annotated with the atoms its channel
positions carry (a :class:`Factor`), and the op rules record *ties*: two atoms that must be
removed together (a residual add ties ``a[i]`` with ``b[i]``). Ties are kept in a union-find;
its classes are the *units* of pruning, and units that share a producer form a channel group.

Atoms are plain CPU ``LongTensor``s whatever the model's device: they are index maps, not data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Position carries no channel of any space (e.g. the image channels of the model input).
NO_ATOM = -1

# Space kinds. Only spaces of kind PRODUCER create new channels; a unit is worth a group only
# if some producer channel is in it (a pos-embedding's token axis, tied to nothing, is not).
PRODUCER = "producer"  # conv/linear output channels, embedding dims
CONSUMER = "consumer"  # conv/linear input channels
NORM = "norm"  # per-channel parameters/buffers that follow the channels (BN, LN, PReLU)
PARAM = "param"  # one axis of a free nn.Parameter used through get_attr


@dataclass(frozen=True)
class Factor:
    """The channel atoms of one tensor.

    ``atoms`` varies along the tensor dims ``dims`` only (shape ``[size(d) for d in dims]``) and
    is constant along every other dim. Usually ``dims`` is one dim (1 for NCHW, -1 as a positive
    index for tokens); a reshape that splits a channel dim (channel shuffle) gives several.
    """

    dims: tuple[int, ...]
    atoms: torch.Tensor

    @property
    def single(self) -> bool:
        return len(self.dims) == 1


#: A tensor's annotation: its factors, on disjoint dims. ``()`` = carries no channels.
Ann = tuple


@dataclass
class Space:
    """One prunable axis of one module or parameter.

    Producer and parameter spaces own a fresh range of atoms. Consumer and norm spaces own
    none: their positions *are* the channels of the tensor they read (``alias``), which keeps
    the number of atoms (and of ties) to the number of channels that really exist.
    """

    name: str  # module path, or parameter path for PARAM spaces
    role: str  # 'out' | 'in' | 'norm' | 'param<d>'
    kind: str
    start: int  # first atom id, -1 for an alias
    size: int
    module_type: str = ""
    alias: torch.Tensor | None = None

    @property
    def atoms(self) -> torch.Tensor:
        if self.alias is not None:
            return self.alias
        return torch.arange(self.start, self.start + self.size)


@dataclass
class Atoms:
    """Allocates atoms, records ties and freezes. Filled by the rules, read by the graph."""

    spaces: dict[tuple[str, str], Space] = field(default_factory=dict)
    ties: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    freezes: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    # atoms removable only inexactly (see :meth:`relax`): frozen unless the graph is not exact
    inexact: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    # (atoms, n): at least n units of these atoms must remain (a 1×1 standardised conv needs 2 inputs)
    at_least: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    n: int = 0

    def space(self, name: str, role: str, kind: str, size: int, module_type: str = "") -> Space:
        """The space (name, role); created on first use so a module called twice shares it."""
        key = (name, role)
        sp = self.spaces.get(key)
        if sp is None:
            sp = Space(name, role, kind, self.n, size, module_type)
            self.spaces[key] = sp
            self.n += size
        elif sp.size != size or sp.alias is not None:
            raise ValueError(f"{name}.{role}: seen with {sp.size} and {size} channels")
        return sp

    def alias(self, name: str, role: str, kind: str, atoms: torch.Tensor, module_type: str = "") -> torch.Tensor:
        """The space (name, role) whose positions are ``atoms`` (NO_ATOM: not prunable).

        A module called again reads position j from another tensor: both must go together, so
        the new atoms are tied to the first call's; a position with a channel in one call and
        none in the other is frozen. Returns the space's atoms.
        """
        key = (name, role)
        sp = self.spaces.get(key)
        if sp is None:
            self.spaces[key] = Space(name, role, kind, -1, atoms.numel(), module_type, atoms)
            return atoms
        old = sp.atoms
        if old.numel() != atoms.numel():
            raise ValueError(f"{name}.{role}: seen with {old.numel()} and {atoms.numel()} channels")
        self.tie(old, atoms)
        odd = (old < 0) != (atoms < 0)
        if bool(odd.any()):
            self.freeze(torch.cat([old[odd], atoms[odd]]), f"{name}: called on inputs with and without channels")
        return old

    def tie(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Atoms a[i] and b[i] must be removed together. NO_ATOM positions are skipped."""
        a, b = a.reshape(-1), b.reshape(-1)
        ok = (a >= 0) & (b >= 0)
        if not bool(ok.all()):
            a, b = a[ok], b[ok]
        if a.numel():
            self.ties.append((a, b))

    def freeze(self, atoms: torch.Tensor, reason: str) -> None:
        """These atoms (and everything tied to them) must never be removed."""
        flat = atoms.reshape(-1)
        flat = flat[flat >= 0]
        if flat.numel():
            self.freezes.append((flat, reason))

    def relax(self, atoms: torch.Tensor, reason: str) -> None:
        """These atoms pass through an op whose statistics span them (a layer norm over
        channels, a softmax over them, weight standardisation): no removal is exact, since a
        dead channel still moves the others. Frozen in an exact graph (the default);
        ``trace(..., exact=False)`` prunes them anyway, as torch-pruning does, and names the
        reason in ``group.inexact``. A rule that relaxes must still tie and pass the channels
        as if they were prunable, so both modes share one set of groups."""
        flat = atoms.reshape(-1)
        flat = flat[flat >= 0]
        if flat.numel():
            self.inexact.append((flat, reason))

    def freeze_ann(self, ann: Ann, reason: str) -> None:
        for f in ann:
            self.freeze(f.atoms, reason)

    def classes(self) -> torch.Tensor:
        """Union-find over all ties: ``root[atom]`` = the smallest atom of its class."""
        parent = torch.arange(self.n)
        if not self.ties:
            return parent
        a = torch.cat([t[0] for t in self.ties])
        b = torch.cat([t[1] for t in self.ties])
        # Min-label propagation over the tie edges, vectorised; pointer jumping (parent of
        # parent) makes it converge in O(log n) rounds for the chains residual stages make.
        while True:
            lo = torch.minimum(parent[a], parent[b])
            new = parent.clone()
            new.scatter_reduce_(0, a, lo, reduce="amin")
            new.scatter_reduce_(0, b, lo, reduce="amin")
            new = new[new]
            if torch.equal(new, parent):
                return parent
            parent = new

    def is_producer(self) -> torch.Tensor:
        """``is_producer[atom]``: whether the atom is an output channel of a producer."""
        out = torch.zeros(self.n, dtype=torch.bool)
        for sp in self.spaces.values():
            if sp.kind == PRODUCER:
                out[sp.start : sp.start + sp.size] = True
        return out
