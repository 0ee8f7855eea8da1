//! The process-wide bound on LLM request bodies held in memory.
//!
//! An LLM request's body is read whole before it is proxied (to route and
//! budget it) and kept until the call ends (to send it again on a retry).
//! `admission.max_buffered_body` bounds the sum over all requests, so many
//! large bodies at once get 503 instead of exhausting memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes are held in units of this size (the semaphore counts in `u32`).
const UNIT: usize = 1024;

/// The allowance all LLM requests of this process draw from.
#[derive(Debug, Clone)]
pub struct BodyBuffer {
    units: Arc<Semaphore>,
    limit: usize,
}

/// One request's share of the allowance, given back when dropped.
#[derive(Debug, Default)]
pub struct HeldBytes {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

/// The allowance has no room for a body now.
#[derive(Debug, thiserror::Error)]
#[error("{limit} bytes of request bodies are buffered already")]
pub struct BufferFull {
    pub limit: usize,
}

impl BodyBuffer {
    pub fn new(limit: usize) -> Self {
        let units = limit.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        Self {
            units: Arc::new(Semaphore::new(units)),
            limit,
        }
    }

    /// Adds `more` bytes to `held`, waiting at most `wait` for other
    /// requests to give room back.
    pub async fn hold(
        &self,
        held: &mut HeldBytes,
        more: usize,
        wait: Duration,
    ) -> Result<(), BufferFull> {
        let total = held.bytes.saturating_add(more);
        let have = held.bytes.div_ceil(UNIT);
        let need = u32::try_from(total.div_ceil(UNIT) - have).map_err(|_| self.full())?;
        if need > 0 {
            let permit = match self.units.clone().try_acquire_many_owned(need) {
                Ok(permit) => permit,
                Err(_) if wait.is_zero() => return Err(self.full()),
                Err(_) => {
                    match tokio::time::timeout(wait, self.units.clone().acquire_many_owned(need))
                        .await
                    {
                        Ok(Ok(permit)) => permit,
                        _ => return Err(self.full()),
                    }
                }
            };
            match held.permit.as_mut() {
                Some(mine) => mine.merge(permit),
                None => held.permit = Some(permit),
            }
        }
        held.bytes = total;
        Ok(())
    }

    /// Bytes held by requests now.
    pub fn in_use(&self) -> usize {
        (self.limit.div_ceil(UNIT) - self.units.available_permits()) * UNIT
    }

    fn full(&self) -> BufferFull {
        BufferFull { limit: self.limit }
    }
}

impl HeldBytes {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_past_the_limit_are_refused_and_room_comes_back() {
        let buffer = BodyBuffer::new(10 * UNIT);
        let mut first = HeldBytes::default();
        buffer
            .hold(&mut first, 6 * UNIT, Duration::ZERO)
            .await
            .unwrap();
        let mut second = HeldBytes::default();
        buffer
            .hold(&mut second, 3 * UNIT, Duration::ZERO)
            .await
            .unwrap();
        // A chunked body grows its share piece by piece.
        assert!(buffer
            .hold(&mut second, 2 * UNIT, Duration::ZERO)
            .await
            .is_err());
        assert_eq!(buffer.in_use(), 9 * UNIT);
        let waiting = {
            let buffer = buffer.clone();
            tokio::spawn(async move {
                let mut third = HeldBytes::default();
                buffer
                    .hold(&mut third, 5 * UNIT, Duration::from_secs(5))
                    .await
                    .map(|()| third.bytes())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert_eq!(waiting.await.unwrap().unwrap(), 5 * UNIT);
        assert_eq!(buffer.in_use(), 3 * UNIT, "the waiter's share went with it");
    }
}
