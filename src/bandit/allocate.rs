//! From P(best) to bucket ranges: integer bucket counts that sum to exactly 10,000, each live
//! arm at least the floor, the rest shared in proportion to P(best) by largest remainder.

/// Buckets of the hash space.
pub const TOTAL: u32 = 10_000;

/// Bucket counts per arm. `pinned` arms (a broken guardrail) get exactly `floor`; the other
/// live arms get `floor` plus a share of what remains in proportion to `p` (equal shares when
/// every `p` is 0). Arms with `live[i] == false` get nothing. Ties in the largest-remainder step
/// go to the lower index, so the result is a pure function of its inputs.
pub fn buckets(p: &[f64], live: &[bool], pinned: &[bool], floor: u32) -> Vec<u32> {
    let n = p.len();
    let mut out = vec![0u32; n];
    let live_count = (0..n).filter(|&i| live[i]).count() as u32;
    if live_count == 0 {
        return out;
    }
    let floor = floor.min(TOTAL / live_count);
    for i in (0..n).filter(|&i| live[i]) {
        out[i] = floor;
    }
    let mut free: Vec<usize> = (0..n).filter(|&i| live[i] && !pinned[i]).collect();
    if free.is_empty() {
        // Every live arm is pinned: the first live arm takes what remains.
        free = (0..n).filter(|&i| live[i]).take(1).collect();
    }
    let rest = TOTAL - floor * live_count;
    let weights: Vec<f64> = free
        .iter()
        .map(|&i| {
            if p[i].is_finite() && p[i] > 0.0 {
                p[i]
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let quotas: Vec<f64> = if total > 0.0 {
        weights
            .iter()
            .map(|w| f64::from(rest) * w / total)
            .collect()
    } else {
        vec![f64::from(rest) / free.len() as f64; free.len()]
    };
    let mut given = 0u32;
    let mut fractions = Vec::with_capacity(free.len());
    for (k, &i) in free.iter().enumerate() {
        let whole = (quotas[k].floor() as u32).min(rest - given);
        out[i] += whole;
        given += whole;
        fractions.push((quotas[k] - quotas[k].floor(), k));
    }
    // Largest fractional part first; the lower index wins a tie.
    fractions.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut left = rest - given;
    let mut j = 0;
    while left > 0 && !fractions.is_empty() {
        out[free[fractions[j % fractions.len()].1]] += 1;
        left -= 1;
        j += 1;
    }
    out
}

/// Consecutive ranges `(arm, end)` for bucket counts, in arm order, arms with no buckets
/// left out. The last end is 10,000 when the counts sum to it.
pub fn ranges(counts: &[u32]) -> Vec<(usize, u32)> {
    let mut end = 0;
    let mut out = Vec::new();
    for (i, c) in counts.iter().enumerate() {
        if *c > 0 {
            end += c;
            out.push((i, end));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shares_follow_p_best_above_the_floor() {
        let b = buckets(&[0.1, 0.2, 0.7], &[true; 3], &[false; 3], 500);
        assert_eq!(b.iter().sum::<u32>(), TOTAL);
        assert_eq!(b, vec![500 + 850, 500 + 1700, 500 + 5950]);
        let b = buckets(&[0.0, 1.0, 0.0], &[true; 3], &[false, false, true], 500);
        assert_eq!(b, vec![500, 9000, 500]);
    }

    #[test]
    fn ranges_are_consecutive() {
        assert_eq!(ranges(&[500, 0, 9500]), vec![(0, 500), (2, 10_000)]);
    }

    proptest! {
        #[test]
        fn every_split_sums_to_ten_thousand_with_each_live_arm_at_least_the_floor(
            p in proptest::collection::vec(0.0f64..1.0, 1..6),
            pins in proptest::collection::vec(any::<bool>(), 6),
            dead in proptest::collection::vec(any::<bool>(), 6),
            floor in 0u32..2500,
        ) {
            let n = p.len();
            let mut live: Vec<bool> = dead[..n].iter().map(|d| !d).collect();
            live[0] = true;
            let pinned = &pins[..n];
            let b = buckets(&p, &live, pinned, floor);
            prop_assert_eq!(b.iter().sum::<u32>(), TOTAL);
            let count = live.iter().filter(|l| **l).count() as u32;
            let f = floor.min(TOTAL / count);
            for i in 0..n {
                if live[i] { prop_assert!(b[i] >= f); } else { prop_assert_eq!(b[i], 0); }
            }
        }
    }
}
