//! The weighted orders a pool picks servers in: the smooth weighted
//! round-robin schedule and the consistent-hash ring, built for one set of
//! weights (the configured ones, or those an operator set).

use pingora_ketama::{Bucket, Continuum};

use crate::config::{Algorithm, PoolConfig};

/// The weighted orders of a pool for one set of weights.
pub(super) struct Rotation {
    /// Weighted round-robin order of server indices, spread as nginx's
    /// smooth weighted round robin spreads them.
    pub(super) schedule: Vec<usize>,
    /// The Ketama ring of a consistent-hash pool, of the servers whose
    /// weight is not 0.
    pub(super) ring: Option<Ring>,
}

pub(super) struct Ring {
    pub(super) continuum: Continuum,
    /// Points on the ring: one pass over it sees every server on it.
    pub(super) points: usize,
    /// Servers on the ring.
    pub(super) servers: usize,
}

impl Rotation {
    pub(super) fn new(config: &PoolConfig, weights: &[u32]) -> Self {
        let ring = matches!(config.algorithm, Algorithm::ConsistentHash(_)).then(|| {
            let buckets: Vec<Bucket> = config
                .servers
                .iter()
                .zip(weights)
                .filter(|(_, &w)| w > 0)
                .map(|(s, &w)| Bucket::new(s.address, w))
                .collect();
            Ring {
                continuum: Continuum::new(&buckets),
                points: weights
                    .iter()
                    .map(|&w| (w * pingora_ketama::DEFAULT_POINT_MULTIPLE) as usize)
                    .sum(),
                servers: buckets.len(),
            }
        });
        Self {
            schedule: smooth_schedule(weights),
            ring,
        }
    }
}

/// Expands weights into a cyclic order in which each server appears
/// `weight` times, interleaved (smooth weighted round robin); a server of
/// weight 0 does not appear.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
        else {
            break;
        };
        current[best] -= total;
        order.push(best);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_interleaves_by_weight_and_skips_weight_zero() {
        assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[2, 0, 1]), vec![0, 2, 0]);
    }
}
