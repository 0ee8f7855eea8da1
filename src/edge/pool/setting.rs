//! What an operator sets for a server at run time, as HAProxy's `set
//! server … state` and `set server … weight` set it, packed into the one
//! word selection reads.

/// The largest weight a server can be given at run time (the configuration
/// allows 1 to the same bound).
pub const MAX_WEIGHT: u32 = 1000;

/// A server's administrative state, as HAProxy's `set server … state`
/// sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// In rotation, subject to health.
    Ready,
    /// Takes no new requests; requests in flight finish and health checks
    /// go on.
    Drain,
    /// Takes no new requests, is not health-checked and counts as down.
    Maint,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// What an operator sets for a server: its state and its current weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub state: AdminState,
    /// 0 to [`MAX_WEIGHT`]; 0 sends the server no new requests, as
    /// `drain` does, while its state stays what it is.
    pub weight: u32,
}

impl Setting {
    /// Whether selection may give the server a new request (health and
    /// room aside).
    pub(super) fn takes_new_requests(self) -> bool {
        self.state == AdminState::Ready && self.weight > 0
    }

    /// State in the high half, weight in the low half.
    pub(super) fn pack(self) -> u32 {
        let state = match self.state {
            AdminState::Ready => 0,
            AdminState::Drain => 1,
            AdminState::Maint => 2,
        };
        (state << 16) | self.weight.min(MAX_WEIGHT)
    }

    pub(super) fn unpack(word: u32) -> Self {
        let state = match word >> 16 {
            0 => AdminState::Ready,
            1 => AdminState::Drain,
            _ => AdminState::Maint,
        };
        Self {
            state,
            weight: word & 0xffff,
        }
    }
}
