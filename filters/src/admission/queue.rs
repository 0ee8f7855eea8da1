//! The flow tree of each pool (group → tenant → key) and the choice of who
//! goes next: weighted service, lifting on becoming backlogged, caps, and
//! dispatch across pools.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tokio::sync::oneshot;

use super::*;

/// Weighted service and load of one flow (group, tenant or key).
#[derive(Debug, Default)]
pub(super) struct Flow {
    /// Tokens served divided by weight.
    pub(super) service: f64,
    /// Tokens served, unweighted, for the fairshare snapshot.
    pub(super) served: f64,
    pub(super) weight: u32,
    /// `max_in_flight` of the flow, as its latest ticket said.
    pub(super) cap: Option<u32>,
    pub(super) in_flight: u32,
    pub(super) waiting: usize,
}

impl Flow {
    fn active(&self) -> bool {
        self.in_flight > 0 || self.waiting > 0
    }

    fn has_room(&self) -> bool {
        self.cap.is_none_or(|cap| self.in_flight < cap)
    }
}

/// A flow with children: a group (of tenants) or a tenant (of keys).
#[derive(Debug, Default)]
pub(super) struct Node<C> {
    pub(super) flow: Flow,
    pub(super) children: HashMap<String, C>,
}

/// A key's flow and its waiters, oldest first.
#[derive(Debug, Default)]
pub(super) struct KeyQueue {
    pub(super) flow: Flow,
    pub(super) waiters: VecDeque<Waiter>,
}

type TenantNode = Node<KeyQueue>;
type GroupNode = Node<TenantNode>;

/// Anything with a flow, so the levels of the tree share their logic.
pub(super) trait HasFlow {
    fn flow(&self) -> &Flow;
    fn flow_mut(&mut self) -> &mut Flow;
}

impl<C> HasFlow for Node<C> {
    fn flow(&self) -> &Flow {
        &self.flow
    }

    fn flow_mut(&mut self) -> &mut Flow {
        &mut self.flow
    }
}

impl HasFlow for KeyQueue {
    fn flow(&self) -> &Flow {
        &self.flow
    }

    fn flow_mut(&mut self) -> &mut Flow {
        &mut self.flow
    }
}

#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) ticket: Ticket,
    /// Arrival number, also what `Leave` finds the waiter by.
    pub(super) id: u64,
    pub(super) reply: oneshot::Sender<Admission>,
}

#[derive(Default)]
pub(super) struct PoolState {
    pub(super) size: u32,
    pub(super) in_flight: u32,
    pub(super) waiting: usize,
    pub(super) groups: HashMap<String, GroupNode>,
}

pub(super) struct State {
    pub(super) capacity: Capacity,
    pub(super) in_flight: u32,
    pub(super) pools: BTreeMap<String, PoolState>,
    pub(super) next_id: u64,
}

/// The ticket's group, tenant and key flows, created when missing.
pub(super) fn path<'a>(
    pool: &'a mut PoolState,
    t: &Ticket,
) -> (&'a mut Flow, &'a mut Flow, &'a mut KeyQueue) {
    let group = pool.groups.entry(t.group.clone()).or_default();
    let tenant = group.children.entry(t.tenant.clone()).or_default();
    let key = tenant.children.entry(t.key.clone()).or_default();
    (&mut group.flow, &mut tenant.flow, key)
}

/// Applies `f` to the ticket's three flows with their weights.
pub(super) fn each_flow(pool: &mut PoolState, t: &Ticket, mut f: impl FnMut(&mut Flow, u32)) {
    let (group, tenant, key) = path(pool, t);
    f(group, t.group_weight);
    f(tenant, t.tenant_weight);
    f(&mut key.flow, t.key_weight);
}

pub(super) fn charge(pool: &mut PoolState, t: &Ticket, tokens: f64) {
    each_flow(pool, t, |flow, w| {
        flow.weight = w.max(1);
        flow.service = (flow.service + tokens / f64::from(flow.weight)).max(0.0);
        flow.served = (flow.served + tokens).max(0.0);
    });
}

/// Puts a waiter at the end of its key's queue, lifting flows that were
/// not backlogged to their active siblings first.
pub(super) fn enqueue(pool: &mut PoolState, waiter: Waiter) {
    let t = &waiter.ticket;
    lift(&mut pool.groups, &t.group);
    let group = pool.groups.entry(t.group.clone()).or_default();
    lift(&mut group.children, &t.tenant);
    let tenant = group.children.entry(t.tenant.clone()).or_default();
    lift(&mut tenant.children, &t.key);
    let key = tenant.children.entry(t.key.clone()).or_default();
    tenant.flow.cap = t.tenant_max_in_flight;
    key.flow.cap = t.key_max_in_flight;
    for flow in [&mut group.flow, &mut tenant.flow, &mut key.flow] {
        flow.waiting += 1;
    }
    key.waiters.push_back(waiter);
    pool.waiting += 1;
}

/// A flow that had nobody waiting starts at the least service among its
/// active siblings: it cannot bank credit while idle.
pub(super) fn lift<C: HasFlow + Default>(siblings: &mut HashMap<String, C>, name: &str) {
    let floor = siblings
        .iter()
        .filter(|(n, c)| c.flow().active() && n.as_str() != name)
        .map(|(_, c)| c.flow().service)
        .reduce(f64::min);
    let flow = siblings.entry(name.to_string()).or_default().flow_mut();
    if let (0, Some(floor)) = (flow.waiting, floor) {
        flow.service = flow.service.max(floor);
    }
}

/// Frees a slot and hands it on.
pub(super) fn release(state: &mut State, ticket: &Ticket) {
    state.in_flight = state.in_flight.saturating_sub(1);
    if let Some(pool) = state.pools.get_mut(&ticket.pool) {
        pool.in_flight = pool.in_flight.saturating_sub(1);
        each_flow(pool, ticket, |flow, _| {
            flow.in_flight = flow.in_flight.saturating_sub(1)
        });
        forget_idle(pool, ticket);
    }
    dispatch(state);
}

/// Keeps the flow tree as small as the set of active clients. A pool with
/// nobody in flight or waiting starts afresh; an idle flow whose service is
/// not ahead of its active siblings is dropped, since on return it would be
/// lifted to them anyway. Idle flows that are ahead stay, so leaving
/// briefly does not wipe out what they were served.
pub(super) fn forget_idle(pool: &mut PoolState, t: &Ticket) {
    if pool.in_flight == 0 && pool.waiting == 0 {
        pool.groups.clear();
        return;
    }
    let Some(group) = pool.groups.get_mut(&t.group) else {
        return;
    };
    if let Some(tenant) = group.children.get_mut(&t.tenant) {
        forget(&mut tenant.children, &t.key);
    }
    forget(&mut group.children, &t.tenant);
    forget(&mut pool.groups, &t.group);
}

pub(super) fn forget<C: HasFlow>(siblings: &mut HashMap<String, C>, name: &str) {
    let Some(service) = siblings
        .get(name)
        .filter(|c| !c.flow().active())
        .map(|c| c.flow().service)
    else {
        return;
    };
    let floor = siblings
        .values()
        .filter(|c| c.flow().active())
        .map(|c| c.flow().service)
        .reduce(f64::min);
    if floor.is_none_or(|floor| service <= floor) {
        siblings.remove(name);
    }
}

pub(super) fn flow_snapshots<'a>(
    flows: impl Iterator<Item = (String, &'a Flow)>,
) -> Vec<FlowSnapshot> {
    let flows: Vec<(String, &Flow)> = flows.collect();
    let active_weight: u64 = flows
        .iter()
        .filter(|(_, f)| f.active())
        .map(|(_, f)| u64::from(f.weight))
        .sum();
    let mut out: Vec<FlowSnapshot> = flows
        .into_iter()
        .map(|(name, f)| FlowSnapshot {
            name,
            weight: f.weight,
            share: if f.active() && active_weight > 0 {
                f64::from(f.weight) / active_weight as f64
            } else {
                0.0
            },
            in_flight: f.in_flight,
            queued: f.waiting,
            service_tokens: f.served.round() as u64,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub(super) fn within_caps(pool: &PoolState, t: &Ticket) -> bool {
    let tenant = pool
        .groups
        .get(&t.group)
        .and_then(|g| g.children.get(&t.tenant));
    let in_flight = |f: Option<&Flow>| f.map_or(0, |f| f.in_flight);
    let key = tenant.and_then(|t2| t2.children.get(&t.key));
    t.tenant_max_in_flight
        .is_none_or(|cap| in_flight(tenant.map(|n| &n.flow)) < cap)
        && t.key_max_in_flight
            .is_none_or(|cap| in_flight(key.map(|k| &k.flow)) < cap)
}

pub(super) fn start(state: &mut State, t: &Ticket) {
    state.in_flight += 1;
    if let Some(pool) = state.pools.get_mut(&t.pool) {
        pool.in_flight += 1;
        each_flow(pool, t, |flow, _| flow.in_flight += 1);
        charge(pool, t, t.estimated_tokens as f64);
    }
}

/// Admits waiters while there is room, in fair order; across pools the one
/// whose eligible head waited longest goes first.
pub(super) fn dispatch(state: &mut State) {
    let order = state.capacity.order;
    while state.in_flight < state.capacity.global {
        let candidate = state
            .pools
            .iter()
            .filter(|(_, p)| p.in_flight < p.size && p.waiting > 0)
            .filter_map(|(name, p)| {
                let pick = pick(p, order)?;
                Some((pick.arrival, name.clone(), pick.names()))
            })
            .min_by_key(|(arrival, _, _)| *arrival);
        let Some((_, pool_name, [group, tenant, key])) = candidate else {
            return;
        };
        let Some(pool) = state.pools.get_mut(&pool_name) else {
            return;
        };
        let waiter = pool
            .groups
            .get_mut(&group)
            .and_then(|g| g.children.get_mut(&tenant))
            .and_then(|t| t.children.get_mut(&key))
            .and_then(|k| k.waiters.pop_front());
        let Some(waiter) = waiter else {
            return;
        };
        pool.waiting -= 1;
        each_flow(pool, &waiter.ticket, |flow, _| {
            flow.waiting = flow.waiting.saturating_sub(1)
        });
        start(state, &waiter.ticket);
        if waiter.reply.send(Admission::Queued).is_err() {
            // The waiter left at this very moment: undo its start.
            let t = waiter.ticket;
            state.in_flight -= 1;
            if let Some(pool) = state.pools.get_mut(&t.pool) {
                pool.in_flight -= 1;
                charge(pool, &t, -(t.estimated_tokens as f64));
                each_flow(pool, &t, |flow, _| {
                    flow.in_flight = flow.in_flight.saturating_sub(1)
                });
                forget_idle(pool, &t);
            }
        }
    }
}

/// The head waiter chosen to go next.
pub(super) struct Pick<'a> {
    pub(super) group: &'a str,
    pub(super) tenant: &'a str,
    pub(super) key: &'a str,
    /// The head waiter's arrival number: earlier arrivals go first on ties.
    pub(super) arrival: u64,
}

impl Pick<'_> {
    fn names(&self) -> [String; 3] {
        [self.group, self.tenant, self.key].map(str::to_string)
    }
}

/// The waiter that goes next in this pool: at each level of the tree the
/// child with the least weighted service that has an eligible waiter
/// (earlier head first on ties), or the longest waiting with
/// [`QueueOrder::Fifo`]. Flows at their cap are skipped.
pub(super) fn pick(pool: &PoolState, order: QueueOrder) -> Option<Pick<'_>> {
    let head = |g, t, k, key: &KeyQueue| {
        key.waiters.front().map(|w| Pick {
            group: g,
            tenant: t,
            key: k,
            arrival: w.id,
        })
    };
    match order {
        QueueOrder::Fair => least(&pool.groups, |g, group| {
            least(&group.children, move |t, tenant| {
                least(&tenant.children, move |k, key| head(g, t, k, key))
            })
        }),
        QueueOrder::Fifo => pool
            .groups
            .iter()
            .flat_map(|(g, group)| {
                eligible(&group.children).flat_map(move |(t, tenant)| {
                    eligible(&tenant.children).filter_map(move |(k, key)| head(g, t, k, key))
                })
            })
            .min_by_key(|p| p.arrival),
    }
}

/// Children with a waiter and room under their cap.
pub(super) fn eligible<C: HasFlow>(
    children: &HashMap<String, C>,
) -> impl Iterator<Item = (&str, &C)> {
    children
        .iter()
        .filter(|(_, c)| c.flow().waiting > 0 && c.flow().has_room())
        .map(|(name, c)| (name.as_str(), c))
}

/// Among eligible children that yield a candidate, the one with the least
/// weighted service. Ties go to the child with fewer requests in flight (a
/// client just lifted from idle ties with its busiest peer and should not
/// wait behind it), then to the earlier arrival.
pub(super) fn least<'a, C: HasFlow>(
    children: &'a HashMap<String, C>,
    mut candidate: impl FnMut(&'a str, &'a C) -> Option<Pick<'a>>,
) -> Option<Pick<'a>> {
    let mut best: Option<((f64, u32), Pick<'a>)> = None;
    for (name, child) in eligible(children) {
        let Some(pick) = candidate(name, child) else {
            continue;
        };
        let flow = child.flow();
        let rank = (flow.service, flow.in_flight);
        let better = best.as_ref().is_none_or(|(least, b)| {
            rank.0 < least.0
                || (rank.0 == least.0
                    && (rank.1 < least.1 || (rank.1 == least.1 && pick.arrival < b.arrival)))
        });
        if better {
            best = Some((rank, pick));
        }
    }
    best.map(|(_, pick)| pick)
}
