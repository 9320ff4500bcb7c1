"""GSS-greedy: gradient-based sample selection for the replay buffer (Aljundi, Lin, Goujaud and Bengio, 2019,
"Gradient based sample selection for online continual learning", NeurIPS), as a clkernel-replay storage policy.

GSS keeps the buffer's samples diverse in gradient space. Each incoming sample ``(x, y)`` gets a score, the largest
cosine similarity between its loss gradient ``g`` and the gradients ``G_1..G_n`` of ``n`` (``mem_strength``) random
minibatches of the buffer::

    s(x, y) = max_i  <g, G_i> / (|g| |G_i|)                                  (in [-1, 1])

While the buffer has room, samples enter with their score. Once it is full, a sample with ``s < 1`` picks a victim
``i`` with probability proportional to ``s_i + 1`` (redundant samples are picked more often) and replaces it with
probability ``(s_i + 1) / ((s_i + 1) + (s + 1))`` (the paper's Algorithm 2, with its scores ``c = s + 1``). As in
the authors' code, incoming samples are handled in minibatches of ``batch_size``: one set of buffer gradients per
minibatch, distinct victims within it, and, when ``batch_threshold`` is set, the minibatch is only considered when
the cosine similarity of its mean gradient to the buffer gradients is below it (the code's ``change_th = 0``; off by
default, as in the paper's Algorithm 2).

:class:`GSSGreedyBuffer` is a :class:`clkernel_replay.ParametricBuffer` whose selection strategy runs that process:
a storage policy like the others, usable by clkernel-replay's ``replay`` plugin or any other. :class:`GSSGreedy`
is replay on it (the ``gss`` training plugin).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import clkernel
from clkernel import CLDataset, Experience, distributed
from clkernel.validate import positive_int
from clkernel_replay import ParametricBuffer, Replay

__all__ = [
    "ID_ATTRIBUTE",
    "GSSGreedy",
    "GSSGreedyBuffer",
    "GSSGreedySelection",
    "gss_replacements",
    "max_cosine_similarity",
]

#: The data attribute that identifies samples across updates: ``update key * 2**32 + position in that update``.
ID_ATTRIBUTE = "gss_id"
_SHIFT = 1 << 32
#: The score of the samples of the first insertion, when the buffer holds nothing to compare with (the authors' code).
FIRST_SCORE = 0.1


def max_cosine_similarity(sample_grads: torch.Tensor, memory_grads: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """GSS's score: each sample gradient's largest cosine similarity to the memory gradients.

    :param sample_grads: float ``(b, P)``, one flattened loss gradient per incoming sample.
    :param memory_grads: float ``(n, P)``, the gradients of ``n`` random buffer minibatches (``n >= 1``).
    :param eps: guards zero-norm gradients (their similarity is 0).
    :returns: float ``(b,)`` in ``[-1, 1]``: ``max_i <g_j, G_i> / (|g_j| |G_i|)``.
    :raises ValueError: when the widths differ or there is no memory gradient.
    """
    if memory_grads.ndim != 2 or len(memory_grads) == 0 or sample_grads.shape[-1] != memory_grads.shape[-1]:
        raise ValueError(f"max_cosine_similarity: sample gradients {tuple(sample_grads.shape)} and memory gradients "
                         f"{tuple(memory_grads.shape)} must be (b, P) and (n >= 1, P)")
    a = sample_grads / sample_grads.norm(dim=1, keepdim=True).clamp_min(eps)
    b = memory_grads / memory_grads.norm(dim=1, keepdim=True).clamp_min(eps)
    return (a @ b.T).max(dim=1).values


def gss_replacements(buffer_scores: torch.Tensor, new_scores: torch.Tensor, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """GSS-greedy's replacement draw for a minibatch of new samples into a full buffer.

    New sample ``j`` is considered when ``new_scores[j] < 1``; it gets a distinct victim ``i`` drawn with
    probability proportional to ``buffer_scores[i] + 1``, and replaces it with probability
    ``(buffer_scores[i] + 1) / ((buffer_scores[i] + 1) + (new_scores[j] + 1))``.

    :param buffer_scores: float ``(m,)`` in ``[-1, 1]``, the stored samples' scores.
    :param new_scores: float ``(b,)`` in ``[-1, 1]``, the new samples' scores.
    :returns: ``(new, victim)``, int64 ``(r,)`` each: new sample ``new[k]`` replaces buffer slot ``victim[k]``.
    """
    considered = (new_scores < 1).nonzero().flatten()
    if len(considered) == 0 or len(buffer_scores) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    considered = considered[:len(buffer_scores)]
    weights = (buffer_scores.double() + 1).clamp_min(1e-12)
    victims = torch.multinomial(weights, len(considered), replacement=False, generator=generator)
    old = buffer_scores.double()[victims] + 1
    p_replace = old / (old + new_scores.double()[considered] + 1)
    hit = torch.rand(len(considered), generator=generator, dtype=torch.float64) < p_replace
    return considered[hit], victims[hit]


class _Gradients:
    """Loss gradients of a model at fixed parameters, per sample and per minibatch, flattened to ``(P,)`` rows."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        self.task_aware = getattr(model, "takes_task_labels", False)
        self.device = next(iter(self.params.values())).device if self.params else torch.device("cpu")
        self._vmapped_grad: Callable[..., Any] = vmap(grad(self._loss), in_dims=(None, 0, 0, 0))
        self._batch = grad(self._loss)
        self._vmapped = True  # False once vmap failed on this model: one sample or minibatch at a time

    def _loss(self, params: dict[str, torch.Tensor], x: Any, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        single = y.ndim == 0
        if single:
            x, y, t = x.unsqueeze(0), y.unsqueeze(0), t.unsqueeze(0)
        out = functional_call(self.model, params, (x, t) if self.task_aware else (x,))
        return F.cross_entropy(out, y)

    @staticmethod
    def _flat(grads: Mapping[str, torch.Tensor], rows: int | None) -> torch.Tensor:
        parts = [g.reshape(rows, -1) if rows is not None else g.reshape(1, -1) for g in grads.values()]
        return torch.cat(parts, dim=1)

    def per_sample(self, x: Any, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """float ``(b, P)``: the gradient of each sample's cross-entropy (``x``: ``(b, *input_shape)``)."""
        if self._vmapped:
            try:
                return self._flat(self._vmapped_grad(self.params, x, y, t), len(y))
            except (RuntimeError, NotImplementedError):  # a model vmap cannot batch
                self._vmapped = False
        return torch.cat([self.batch(x[i:i + 1], y[i:i + 1], t[i:i + 1]) for i in range(len(y))])

    def per_batch(self, x: Any, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """float ``(n, P)``: the gradient of each minibatch's mean cross-entropy (``x``: ``(n, b, *input_shape)``,
        ``y`` and ``t``: ``(n, b)``)."""
        if self._vmapped:
            try:
                return self._flat(self._vmapped_grad(self.params, x, y, t), len(y))
            except (RuntimeError, NotImplementedError):
                self._vmapped = False
        return torch.cat([self.batch(x[i], y[i], t[i]) for i in range(len(y))])

    def batch(self, x: Any, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """float ``(1, P)``: the gradient of the minibatch's mean cross-entropy."""
        return self._flat(self._batch(self.params, x, y, t), None)


class GSSGreedySelection:
    """The selection strategy of :class:`GSSGreedyBuffer`: runs GSS-greedy over the stored and the new samples.

    Samples are told apart by their ``gss_id`` data attribute (:data:`ID_ATTRIBUTE`), which
    :class:`GSSGreedyBuffer` adds; the selection keeps the score of every stored sample by that id.

    :param mem_strength: buffer minibatches whose gradients score a new sample (the paper's ``n``; 10 in the
        authors' MNIST runs).
    :param batch_size: incoming samples handled together, and the size of the buffer minibatches (10).
    :param batch_threshold: with a full buffer, consider an incoming minibatch only when its mean gradient's largest
        cosine similarity to the buffer gradients is below this (the authors' code: 0); None (the default, the
        paper's Algorithm 2) considers all.
    :param seed: seeds the draws (buffer minibatches, victims, replacement coins).
    """

    def __init__(self, mem_strength: int = 10, batch_size: int = 10, batch_threshold: float | None = None,
                 seed: int | None = None) -> None:
        self.mem_strength = positive_int(mem_strength, "mem_strength", "gss")
        self.batch_size = positive_int(batch_size, "batch_size", "gss")
        self.batch_threshold = None if batch_threshold is None else float(batch_threshold)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self.generator = torch.Generator().manual_seed(seed)
        self.ids = torch.zeros(0, dtype=torch.long)  # the stored samples' ids, sorted
        self.scores = torch.zeros(0, dtype=torch.float64)  # their scores, aligned with ids

    def score_of(self, ids: torch.Tensor) -> torch.Tensor:
        """float64 scores of the stored samples ``ids`` (int64); NaN for an id that is not stored."""
        at = torch.searchsorted(self.ids, ids).clamp(max=max(len(self.ids) - 1, 0))
        found = self.ids[at] == ids if len(self.ids) else torch.zeros(len(ids), dtype=torch.bool)
        out = torch.full((len(ids),), float("nan"), dtype=torch.float64)
        out[found] = self.scores[at[found]]
        return out

    def _memory_draw(self, stored: torch.Tensor) -> torch.Tensor:
        """``(count, size)`` positions: ``count`` disjoint random minibatches of the stored samples."""
        size = min(self.batch_size, len(stored))
        count = max(1, min(self.mem_strength, len(stored) // size))
        return stored[torch.randperm(len(stored), generator=self.generator)[:count * size]].reshape(count, size)

    def order(self, dataset: CLDataset, *, k: int, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Positions of the samples GSS-greedy keeps, at most ``k``: the stored ones first met, then the new ones
        in the order they arrive (their order in ``dataset``).

        In a distributed run every rank must call it (the buffer is updated at an experience's end, where every
        rank is): each computes the choice and rank 0's is kept on all (:func:`clkernel.distributed.broadcast_object`).

        :raises ValueError: without ``model``, or when ``dataset`` lacks the ``gss_id`` attribute.
        """
        if model is None:
            raise ValueError("gss: the GSS-greedy buffer scores samples by their loss gradients and needs the model: "
                             "update(experience, model=model)")
        try:
            ids = getattr(dataset, ID_ATTRIBUTE)
        except AttributeError:
            raise ValueError(f"gss: the samples have no {ID_ATTRIBUTE!r} attribute; update the buffer through "
                             f"GSSGreedyBuffer.update, which adds it") from None
        known = ~self.score_of(ids).isnan()
        kept = known.nonzero().flatten().tolist()  # positions in dataset, in buffer slots
        scores = self.score_of(ids[known]).tolist()
        arrivals = (~known).nonzero().flatten()
        view = dataset.eval()
        gradients = _Gradients(model)
        with clkernel.eval_mode(model):
            for start in range(0, len(arrivals), self.batch_size):
                chunk = arrivals[start:start + self.batch_size]
                x, y, t = (v.to(gradients.device) for v in view.get_batch(chunk))
                if not kept:  # the first insertion: nothing to compare with
                    take = min(k, len(chunk))
                    kept += chunk[:take].tolist()
                    scores += [FIRST_SCORE] * take
                    continue
                # the gradients of the buffer minibatches (one vmap over them) and of each incoming sample
                draw = self._memory_draw(torch.tensor(kept))
                bx, by, bt = (v.to(gradients.device) for v in view.get_batch(draw.flatten()))
                shape = draw.shape
                memory = gradients.per_batch(bx.reshape(*shape, *bx.shape[1:]), by.reshape(shape), bt.reshape(shape))
                incoming = gradients.per_sample(x, y, t)
                room = k - len(kept)
                if room <= 0 and self.batch_threshold is not None:
                    batch_sim = float(max_cosine_similarity(incoming.mean(dim=0, keepdim=True), memory)[0])
                    if batch_sim >= self.batch_threshold:
                        continue
                s = max_cosine_similarity(incoming, memory).double().cpu()
                if room > 0:  # fill the room first, in arrival order
                    kept += chunk[:room].tolist()
                    scores += s[:room].tolist()
                    chunk, s = chunk[room:], s[room:]
                    if len(chunk) == 0:
                        continue
                new, victim = gss_replacements(torch.tensor(scores, dtype=torch.float64), s, self.generator)
                for j, i in zip(new.tolist(), victim.tolist()):
                    kept[i], scores[i] = int(chunk[j]), float(s[j])
        # every rank computed the same choice from the same model, data and draws; rank 0's is taken so that a
        # near tie rounded differently on another device cannot make the buffers differ
        kept, scores = distributed.broadcast_object((kept, scores))
        kept_t = torch.tensor(kept, dtype=torch.long)
        order = torch.argsort(ids[kept_t])
        self.ids, self.scores = ids[kept_t][order], torch.tensor(scores, dtype=torch.float64)[order]
        return kept_t

    def state_dict(self) -> dict[str, Any]:
        """The stored samples' ids and scores and the generator's state (plain tensors)."""
        return {"ids": self.ids.clone(), "scores": self.scores.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ids, self.scores = state["ids"].clone(), state["scores"].clone()
        self.generator.set_state(state["generator"])


def _tag(dataset: CLDataset, key: int) -> CLDataset:
    return dataset.with_attribute(ID_ATTRIBUTE, key * _SHIFT + torch.arange(len(dataset)))


class GSSGreedyBuffer(ParametricBuffer):
    """GSS-greedy (Aljundi et al., 2019) as a clkernel-replay storage policy: at most ``max_size`` samples, chosen
    by :class:`GSSGreedySelection` with the model given to :meth:`update`.

    Each update runs GSS-greedy over the update's samples in their order, minibatch by minibatch, at the model's
    current parameters (eval mode). On an online stream of mini-experiences that is the paper's per-minibatch
    selection; on whole experiences, the whole experience is streamed through the selection at its end.

    :param max_size: the buffer's capacity.
    :param mem_strength: as :class:`GSSGreedySelection`.
    :param batch_size: as :class:`GSSGreedySelection`.
    :param batch_threshold: as :class:`GSSGreedySelection`.
    :param seed: seeds the selection's draws (default: drawn from torch's global generator).
    :raises ValueError: for a size or count that is not a positive integer.
    """

    def __init__(self, max_size: int, *, mem_strength: int = 10, batch_size: int = 10,
                 batch_threshold: float | None = None, seed: int | None = None) -> None:
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        super().__init__(max_size, groupby=None, seed=seed,
                         selection=GSSGreedySelection(mem_strength, batch_size, batch_threshold, seed + 1))
        self._updates_seen = 0

    @property
    def scores(self) -> torch.Tensor:
        """float64 ``(len(self),)``: each buffer sample's GSS score (max cosine similarity when it entered), aligned
        with :attr:`buffer`."""
        buffer = self.buffer
        if buffer is None:
            return torch.zeros(0, dtype=torch.float64)
        return self.selection.score_of(getattr(buffer, ID_ATTRIBUTE))

    def update(self, data: CLDataset | Experience, *, key: int | None = None,
               model: torch.nn.Module | None = None) -> None:
        """Stream ``data``'s samples through GSS-greedy; ``model`` gives the gradients.

        :param key: identifies this update (default: the experience's index, or the number of updates so far).
        :raises ValueError: without ``model``.
        :raises TypeError: when ``data`` is neither an Experience nor a CLDataset.
        """
        if isinstance(data, Experience):
            dataset, key = data.dataset, data.index if key is None else key
        elif isinstance(data, CLDataset):
            dataset, key = data, self._updates_seen if key is None else key
        else:
            raise TypeError(f"GSSGreedyBuffer.update expects an Experience or a CLDataset, got {type(data).__name__}")
        if model is None:
            raise ValueError("gss: the GSS-greedy buffer scores samples by their loss gradients and needs the model: "
                             "update(experience, model=model)")
        super().update(_tag(dataset, int(key)), key=int(key), model=model)
        self._updates_seen += 1

    def restore(self, datasets: Mapping[int, CLDataset] | Callable[[int], CLDataset]) -> None:
        """As :meth:`clkernel_replay.StoragePolicy.restore`, giving the samples back their ids."""
        get = datasets if callable(datasets) else datasets.__getitem__
        super().restore(lambda key: _tag(get(key), key))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "updates_seen": self._updates_seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._updates_seen = int(state["updates_seen"])


class GSSGreedy(Replay):
    """GSS-greedy replay (Aljundi et al., 2019): clkernel-replay's :class:`~clkernel_replay.Replay` on a
    :class:`GSSGreedyBuffer`. Every training minibatch gets ``batch_size_mem`` buffer samples; after each experience
    the buffer is updated by GSS-greedy with the model as trained.

    :param mem_size: buffer size in samples.
    :param mem_strength: buffer minibatches whose gradients score a new sample (10).
    :param batch_size: incoming samples scored together and the buffer minibatches' size (10).
    :param batch_threshold: the minibatch gate of the authors' code (they use 0); None (the default): off.
    :param batch_size_mem: buffer samples replayed per minibatch (default: the strategy's ``train_mb_size``).
    :param seed: seeds the buffer and the replay draws.
    :raises ValueError: for a size or count that is not a positive integer.
    """

    name = "gss"

    def __init__(self, mem_size: int = 200, mem_strength: int = 10, batch_size: int = 10,
                 batch_threshold: float | None = None, batch_size_mem: int | None = None,
                 seed: int | None = None) -> None:
        positive_int(mem_size, "mem_size", self.name)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        policy = GSSGreedyBuffer(mem_size, mem_strength=mem_strength, batch_size=batch_size,
                                 batch_threshold=batch_threshold, seed=seed)
        super().__init__(mem_size=mem_size, batch_size_mem=batch_size_mem, storage_policy=policy, seed=seed + 2)
