"""Data-parallel training with gradient modes that are not linear in the cotangent.

``DistributedDataParallel`` averages the ranks' gradients, which is right when each rank's loss is
the mean over its own samples *and* the backward is linear in the cotangent. The contrastive modes
(``Contrastive``, ``Symmetric``) are not: their backward contrasts the solution with the one nudged
by ``β·g``, so scaling the cotangent ``g`` changes the gradient by more than the scale. With a
per-rank mean over ``B/W`` samples every sample receives ``W`` times the cotangent it receives from
the mean over the global batch of ``B``.

To train exactly as one process on the global batch: let each rank's loss be its share of the global
loss (``sum over its samples / B``), and sum the ranks' gradients with ``allreduce_sum_hook``::

    model = torch.nn.parallel.DistributedDataParallel(net)
    model.register_comm_hook(None, layers.ddp.allreduce_sum_hook)
    loss = F.cross_entropy(model(x_local), y_local, reduction="sum") / global_batch_size
"""

import torch
import torch.distributed as dist

__all__ = ["allreduce_sum_hook"]


def allreduce_sum_hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the sum (not the mean) of the ranks' gradients.

    (Its annotations are the real types, not strings: DDP checks them.)

    Args:
        state: unused (pass ``None`` to ``register_comm_hook``).
        bucket: the gradient bucket DDP hands over.

    Returns:
        A future holding the summed bucket.
    """
    group = state if isinstance(state, dist.ProcessGroup) else None
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])
