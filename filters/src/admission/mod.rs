//! Fair admission: each model pool has a number of concurrent slots and the
//! process a global ceiling; when demand exceeds them, waiting requests are
//! admitted in weighted fair order so no tenant can starve another.
//!
//! The order is hierarchical — fairshare group by group weight, then tenant
//! by tenant weight, then key by key weight — each level picking the flow
//! with the least *weighted service*, counted in tokens (estimated at
//! admission, corrected to actual tokens at settlement) as in the Virtual
//! Token Counter (Sheng et al., OSDI 2024). A flow that becomes backlogged
//! is lifted to the least counter among its active siblings, so idle time
//! banks no credit. Requests of one key are served in arrival order.
//!
//! **Bound.** Between two flows of one parent that stay backlogged, the
//! difference in weighted service `S_a/w_a − S_b/w_b` never exceeds
//! `2·C/w_min` tokens, where `C` bounds the (estimated or corrected) token
//! cost of one request and `w_min` is the smaller weight: a flow is only
//! chosen while its counter is the least, and one admission moves a counter
//! by at most `C/w`; the lift on becoming backlogged adds at most one more
//! such step. The scheduler is work-conserving: a slot is never left free
//! while an eligible request waits (caps on tenants and keys can make a
//! waiter ineligible; it is skipped, not blocking others).
//!
//! **Cost.** Flows form a tree per pool (group → tenant → key). A decision
//! walks only the flows that have waiters, without allocating, so it costs
//! time linear in the backlogged clients of the pool.
//!
//! This module holds the public face (tickets, permits, the scheduler);
//! `queue` holds the flow tree and the choice of who goes next.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// Who is asking and how much it may cost.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub pool: String,
    pub group: String,
    pub group_weight: u32,
    pub tenant: String,
    /// Tenant weight × the model's admission weight.
    pub tenant_weight: u32,
    pub tenant_max_in_flight: Option<u32>,
    pub key: String,
    pub key_weight: u32,
    pub key_max_in_flight: Option<u32>,
    pub estimated_tokens: u64,
}

/// How a request got its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// At once: room and nobody waiting in the pool.
    Fast,
    /// After waiting its fair turn.
    Queued,
    /// After waiting longer than the brownout threshold: cap its output.
    Brownout,
}

impl Admission {
    pub fn label(&self) -> &'static str {
        match self {
            Admission::Fast => "fast",
            Admission::Queued => "queued",
            Admission::Brownout => "brownout",
        }
    }
}

/// Why a request got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the queue of pool {0} is full")]
    QueueFull(String),
    #[error("no slot in pool {0} within {1:?}")]
    TimedOut(String, Duration),
}

/// Limits the scheduler works within.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// Concurrent requests in the whole process.
    pub global: u32,
    /// Waiting requests per pool before new ones are refused.
    pub queue_per_pool: usize,
    /// Longest wait before a 503.
    pub timeout: Duration,
    /// Waits longer than this are marked brownout (`None`: never).
    pub brownout_after: Option<Duration>,
    pub order: QueueOrder,
}

/// Which waiter a freed slot goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueOrder {
    /// Hierarchical weighted fair queuing (the default).
    Fair,
    /// Arrival order, ignoring weights: the baseline fairness is measured
    /// against.
    Fifo,
}

/// One pool as the fairshare API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolSnapshot {
    pub pool: String,
    pub size: u32,
    pub in_flight: u32,
    pub queued: usize,
    pub groups: Vec<FlowSnapshot>,
    pub tenants: Vec<FlowSnapshot>,
}

/// A group or tenant within a pool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowSnapshot {
    /// The group name, or `group/tenant`.
    pub name: String,
    pub weight: u32,
    /// Its weight over the weights of its active siblings (0 when idle).
    pub share: f64,
    pub in_flight: u32,
    pub queued: usize,
    /// Tokens served since the pool was last idle (estimates corrected to
    /// actual tokens at settlement).
    pub service_tokens: u64,
}

/// The whole scheduler at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub global: u32,
    pub in_flight: u32,
    pub queued: usize,
    pub pools: Vec<PoolSnapshot>,
}

mod queue;
#[cfg(test)]
mod tests;

use queue::*;

/// The admission scheduler; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    state: Arc<Mutex<State>>,
}

/// A slot; dropping it frees the slot exactly once.
pub struct Permit {
    state: Arc<Mutex<State>>,
    ticket: Ticket,
    admission: Admission,
    waited: Duration,
}

impl Permit {
    pub fn admission(&self) -> Admission {
        self.admission
    }

    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Replaces the estimate in the flows' service with the actual tokens.
    pub fn correct(&self, actual_tokens: u64) {
        let delta = actual_tokens as f64 - self.ticket.estimated_tokens as f64;
        {
            let mut state = lock(&self.state);
            if let Some(pool) = state.pools.get_mut(&self.ticket.pool) {
                charge(pool, &self.ticket, delta);
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.state);
            release(&mut state, &self.ticket);
        }
    }
}

/// The state stays consistent across a panic elsewhere (every change is
/// made whole under the lock), so a poisoned lock is taken over rather
/// than turning admission off.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Scheduler {
    pub fn new(capacity: Capacity) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                capacity,
                in_flight: 0,
                pools: BTreeMap::new(),
                next_id: 0,
            })),
        }
    }

    /// Sets a pool's size (live); waiters are admitted if it grew.
    pub fn set_pool_size(&self, pool: &str, size: u32) {
        {
            let mut state = lock(&self.state);
            state.pools.entry(pool.to_string()).or_default().size = size;
            dispatch(&mut state);
        }
    }

    /// Sets the global ceiling (live).
    pub fn set_global(&self, global: u32) {
        {
            let mut state = lock(&self.state);
            state.capacity.global = global;
            dispatch(&mut state);
        }
    }

    /// The global ceiling.
    pub fn global(&self) -> u32 {
        lock(&self.state).capacity.global
    }

    /// Every pool's size, load and flows, for the fairshare API and metrics.
    pub fn snapshot(&self) -> Snapshot {
        let state = lock(&self.state);
        let pools = state
            .pools
            .iter()
            .map(|(name, p)| PoolSnapshot {
                pool: name.clone(),
                size: p.size,
                in_flight: p.in_flight,
                queued: p.waiting,
                groups: flow_snapshots(p.groups.iter().map(|(g, node)| (g.clone(), &node.flow))),
                tenants: p
                    .groups
                    .iter()
                    .flat_map(|(g, node)| {
                        flow_snapshots(
                            node.children
                                .iter()
                                .map(move |(t, tenant)| (format!("{g}/{t}"), &tenant.flow)),
                        )
                    })
                    .collect(),
            })
            .collect();
        Snapshot {
            global: state.capacity.global,
            in_flight: state.in_flight,
            queued: state.pools.values().map(|p| p.waiting).sum(),
            pools,
        }
    }

    /// Requests in flight and waiting, in total.
    pub fn load(&self) -> (u32, usize) {
        let s = lock(&self.state);
        (s.in_flight, s.pools.values().map(|p| p.waiting).sum())
    }

    /// Waits for a slot. Dropping the future (client gone) leaves the queue.
    pub async fn admit(&self, ticket: Ticket) -> Result<Permit, Refusal> {
        let (rx, id, timeout, brownout_after) = {
            let mut state = lock(&self.state);
            let State {
                capacity,
                in_flight,
                pools,
                next_id,
            } = &mut *state;
            if !pools.contains_key(&ticket.pool) {
                pools.insert(ticket.pool.clone(), PoolState::default());
            }
            let Some(pool) = pools.get_mut(&ticket.pool) else {
                return Err(Refusal::QueueFull(ticket.pool.clone()));
            };
            let fast = *in_flight < capacity.global
                && pool.waiting == 0
                && pool.in_flight < pool.size
                && within_caps(pool, &ticket);
            if fast {
                start(&mut state, &ticket);
                return Ok(Permit {
                    state: self.state.clone(),
                    ticket,
                    admission: Admission::Fast,
                    waited: Duration::ZERO,
                });
            }
            if pool.waiting >= capacity.queue_per_pool {
                return Err(Refusal::QueueFull(ticket.pool.clone()));
            }
            let (tx, rx) = oneshot::channel();
            let id = *next_id;
            *next_id += 1;
            enqueue(
                pool,
                Waiter {
                    ticket: ticket.clone(),
                    id,
                    reply: tx,
                },
            );
            let limits = (capacity.timeout, capacity.brownout_after);
            dispatch(&mut state);
            (rx, id, limits.0, limits.1)
        };
        let started = Instant::now();
        let mut leave = Leave {
            state: &self.state,
            ticket: &ticket,
            id,
            rx,
            armed: true,
        };
        let result = tokio::time::timeout(timeout, &mut leave.rx).await;
        let admitted = matches!(result, Ok(Ok(_)));
        leave.armed = !admitted;
        drop(leave);
        if !admitted {
            return Err(Refusal::TimedOut(ticket.pool.clone(), timeout));
        }
        let waited = started.elapsed();
        let admission = match brownout_after {
            Some(after) if waited >= after => Admission::Brownout,
            _ => Admission::Queued,
        };
        Ok(Permit {
            state: self.state.clone(),
            ticket,
            admission,
            waited,
        })
    }
}

/// A waiter that stops waiting (timed out, or its future dropped because
/// the client went away) leaves the queue; if a slot was handed to it at
/// that very moment, the slot is given back.
struct Leave<'a> {
    state: &'a Arc<Mutex<State>>,
    ticket: &'a Ticket,
    id: u64,
    rx: oneshot::Receiver<Admission>,
    armed: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = lock(self.state);
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            // Admitted as it left: nothing was served.
            if let Some(pool) = state.pools.get_mut(&self.ticket.pool) {
                charge(pool, self.ticket, -(self.ticket.estimated_tokens as f64));
            }
            release(&mut state, self.ticket);
            return;
        }
        let t = self.ticket;
        let Some(pool) = state.pools.get_mut(&t.pool) else {
            return;
        };
        let (_, _, key) = path(pool, t);
        if let Some(at) = key.waiters.iter().position(|w| w.id == self.id) {
            key.waiters.remove(at);
            pool.waiting -= 1;
            each_flow(pool, t, |flow, _| {
                flow.waiting = flow.waiting.saturating_sub(1)
            });
        }
        forget_idle(pool, t);
    }
}
