//! Data parallelism over a [`Group`]: every rank starts from rank 0's state,
//! and after each backward pass the gradients are averaged over the ranks,
//! so that every rank applies the same update, that of the global batch.
use tch::{Kind, Tensor};

use crate::distributed::collective::Group;
use crate::Result;

/// Gradients are reduced in buckets of about this many bytes (DDP's default
/// bucket size): one collective per bucket rather than one per tensor,
/// without a second copy of the whole model's gradients.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Overwrites `tensors` (parameters, buffers, optimiser state; in the same
/// order on every rank) with rank 0's.
pub fn broadcast_from_rank0(group: &Group, tensors: &[Tensor]) -> Result<()> {
    let mut shallow: Vec<Tensor> = tensors.iter().map(Tensor::shallow_clone).collect();
    tch::no_grad(|| group.broadcast(&mut shallow, 0))
}

/// Replaces the gradient of each of `params` (in the same order on every
/// rank) by its mean over the ranks, and returns the sum over the ranks of
/// `extras` (a 1-D float tensor on the gradients' device: the step's loss,
/// votes), which rides in the last bucket. A parameter without a gradient
/// contributes zeros and keeps none.
pub fn average_gradients(group: &Group, params: &[Tensor], extras: &Tensor) -> Result<Tensor> {
    let world = group.world_size() as f64;
    let mut buckets: Vec<Vec<&Tensor>> = vec![Vec::new()];
    let mut bytes = 0usize;
    for p in params {
        let size = p.numel() * 4;
        if bytes > 0 && bytes + size > BUCKET_BYTES {
            buckets.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        buckets.last_mut().expect("there is always a bucket").push(p);
    }
    let last = buckets.len() - 1;
    let mut summed_extras = None;
    tch::no_grad(|| -> Result<()> {
        for (i, bucket) in buckets.iter().enumerate() {
            let mut parts: Vec<Tensor> = bucket
                .iter()
                .map(|p| {
                    let g = p.grad();
                    if g.defined() {
                        g.to_kind(Kind::Float).reshape([-1])
                    } else {
                        p.zeros_like().to_kind(Kind::Float).reshape([-1])
                    }
                })
                .collect();
            if i == last {
                parts.push(extras.to_kind(Kind::Float).reshape([-1]));
            }
            let mut flat = [Tensor::cat(&parts, 0)];
            group.all_reduce_sum(&mut flat)?;
            let [flat] = flat;
            let mut offset = 0;
            for p in bucket {
                let n = p.numel() as i64;
                let mut g = p.grad();
                if g.defined() {
                    let mean = flat.narrow(0, offset, n).view(g.size().as_slice()) / world;
                    g.copy_(&mean);
                }
                offset += n;
            }
            if i == last {
                summed_extras = Some(flat.narrow(0, offset, extras.numel() as i64));
            }
        }
        Ok(())
    })?;
    Ok(summed_extras.expect("the last bucket carries the extras"))
}
