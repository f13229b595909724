//! The priority map between POSIX priorities (0..32768) and AMQP priorities
//! (0..=`x-max-priority`, at most 255; RabbitMQ recommends few levels).
//!
//! A map is an ascending list of POSIX priorities, the *lower bounds* of the
//! buckets: bucket `b` (AMQP priority `b`) holds the POSIX priorities from
//! `bounds[b]` up to `bounds[b + 1] - 1`, the last bucket everything from its
//! bound up. The first bound is 0. The broker queue is declared with
//! `x-max-priority` = the number of buckets − 1.
//!
//! Outbound (`out`), POSIX priority `p` goes to the bucket that holds it.
//! Inbound (`in`), a message keeps its exact POSIX priority when it carries
//! one (the header `x-shmq-priority`, set by `out`); any other message (from
//! another publisher) gets the lower bound of its AMQP priority's bucket
//! (AMQP priorities above the last bucket count as the last).
//!
//! The default, `0,1,2,3,4,5,6,7,8,9`, keeps POSIX priorities 0 to 8 apart
//! and puts 9 and above in the top bucket: ten levels, as RabbitMQ advises.

use std::fmt;

/// POSIX priorities are below this (Linux's `MQ_PRIO_MAX`).
pub const POSIX_PRIO_MAX: u32 = 32768;

/// A bucket map; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrioMap {
    bounds: Vec<u32>,
}

impl Default for PrioMap {
    fn default() -> Self {
        PrioMap {
            bounds: (0..10).collect(),
        }
    }
}

impl PrioMap {
    /// A map from its lower bounds.
    ///
    /// # Errors
    /// Unless the bounds start at 0, ascend strictly, stay below 32768 and
    /// number 1 to 256.
    pub fn new(bounds: Vec<u32>) -> Result<Self, String> {
        if bounds.is_empty() || bounds.len() > 256 {
            return Err(format!(
                "a priority map has 1 to 256 buckets, not {}",
                bounds.len()
            ));
        }
        if bounds[0] != 0 {
            return Err("a priority map's first bound is 0".into());
        }
        if bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err("a priority map's bounds ascend strictly".into());
        }
        if bounds.iter().any(|&b| b >= POSIX_PRIO_MAX) {
            return Err(format!(
                "a priority map's bounds are below {POSIX_PRIO_MAX}"
            ));
        }
        Ok(PrioMap { bounds })
    }

    /// The highest AMQP priority: the queue's `x-max-priority`.
    pub fn max_amqp(&self) -> u8 {
        u8::try_from(self.bounds.len() - 1).unwrap_or(u8::MAX)
    }

    /// The AMQP priority (bucket) of POSIX priority `p`.
    pub fn to_amqp(&self, p: u32) -> u8 {
        let b = self.bounds.partition_point(|&lo| lo <= p) - 1;
        u8::try_from(b).unwrap_or(u8::MAX)
    }

    /// The POSIX priority for AMQP priority `a` without an exact one: the
    /// lower bound of its bucket.
    pub fn to_posix(&self, a: u8) -> u32 {
        let b = usize::from(a).min(self.bounds.len() - 1);
        self.bounds[b]
    }
}

impl std::str::FromStr for PrioMap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bounds = s
            .split(',')
            .map(|t| {
                t.trim()
                    .parse::<u32>()
                    .map_err(|e| format!("priority map {s:?}: {t:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        PrioMap::new(bounds)
    }
}

impl fmt::Display for PrioMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.bounds.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{b}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_keeps_0_to_8_and_lumps_the_rest() {
        let m = PrioMap::default();
        assert_eq!(m.max_amqp(), 9);
        for p in 0..9 {
            assert_eq!(m.to_amqp(p), p as u8);
            assert_eq!(m.to_posix(p as u8), p);
        }
        assert_eq!(m.to_amqp(9), 9);
        assert_eq!(m.to_amqp(32767), 9);
        assert_eq!(m.to_posix(9), 9);
        assert_eq!(m.to_posix(200), 9);
    }

    #[test]
    fn buckets_by_lower_bound() {
        let m: PrioMap = "0, 10, 100, 1000".parse().unwrap();
        assert_eq!(m.max_amqp(), 3);
        assert_eq!(m.to_amqp(0), 0);
        assert_eq!(m.to_amqp(9), 0);
        assert_eq!(m.to_amqp(10), 1);
        assert_eq!(m.to_amqp(999), 2);
        assert_eq!(m.to_amqp(1000), 3);
        assert_eq!(m.to_amqp(32767), 3);
        assert_eq!(m.to_posix(2), 100);
        assert_eq!(m.to_string(), "0,10,100,1000");
        // Order is kept: a higher POSIX priority never gets a lower bucket.
        let mut last = 0;
        for p in 0..POSIX_PRIO_MAX {
            let a = m.to_amqp(p);
            assert!(a >= last);
            last = a;
        }
    }

    #[test]
    fn bad_maps() {
        for s in ["", "1,2", "0,0", "0,5,3", "0,32768", "x"] {
            assert!(s.parse::<PrioMap>().is_err(), "{s}");
        }
        let many = (0..257)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(many.parse::<PrioMap>().is_err());
        let most = (0..256)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(most.parse::<PrioMap>().unwrap().max_amqp(), 255);
    }
}
