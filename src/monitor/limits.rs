//! Connection caps: at most `max_connections` at once and `max_connections_per_ip` per client
//! address. A [`Permit`] holds one slot until dropped (attach it to the connection's guard).
//! The per-address map holds only addresses with live connections, so it is bounded by them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::RejectReason;

/// The caps; cheap to clone.
#[derive(Clone)]
pub struct ConnectionLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    max_total: usize,
    max_per_ip: usize,
    /// A std `Mutex`: held for a map lookup and an increment, never across an await.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// One connection slot; released on drop.
pub struct Permit {
    limiter: ConnectionLimiter,
    ip: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total,
                max_per_ip,
                counts: Mutex::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for `ip`, or says which cap refused it.
    pub fn acquire(&self, ip: IpAddr) -> Result<Permit, RejectReason> {
        let mut counts = self.lock();
        if counts.total >= self.inner.max_total {
            return Err(RejectReason::GlobalLimit);
        }
        let per_ip = counts.by_ip.get(&ip).copied().unwrap_or(0);
        if per_ip >= self.inner.max_per_ip {
            return Err(RejectReason::PerIpLimit);
        }
        counts.total += 1;
        counts.by_ip.insert(ip, per_ip + 1);
        Ok(Permit {
            limiter: self.clone(),
            ip,
        })
    }

    /// Addresses holding at least one slot.
    pub fn addresses(&self) -> usize {
        self.lock().by_ip.len()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.limiter.lock();
        counts.total -= 1;
        if let Some(n) = counts.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_refuse_with_their_reason_and_slots_return_on_drop() {
        let limiter = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = limiter.acquire(a).unwrap();
        let _p2 = limiter.acquire(a).unwrap();
        assert_eq!(limiter.acquire(a).err(), Some(RejectReason::PerIpLimit));
        let _p3 = limiter.acquire(b).unwrap();
        assert_eq!(limiter.acquire(b).err(), Some(RejectReason::GlobalLimit));
        drop(p1);
        assert!(limiter.acquire(b).is_ok(), "a slot came back");
        assert_eq!(limiter.addresses(), 2);
    }

    #[test]
    fn the_address_map_empties_when_connections_end() {
        let limiter = ConnectionLimiter::new(1000, 1000);
        let permits: Vec<_> = (0..200u8)
            .map(|i| limiter.acquire(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(limiter.addresses(), 200);
        drop(permits);
        assert_eq!(limiter.addresses(), 0);
    }
}
