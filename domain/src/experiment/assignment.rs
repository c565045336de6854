//! GrowthBook-compatible assignment: the same user gets the same arm here as
//! in any GrowthBook SDK given the same seed (our salt), hash version,
//! weights and coverage.
//!
//! The free functions mirror the JS SDK's `util.ts` one to one (`hashFnv32a`,
//! `hash`, `getEqualWeights`, `getBucketRanges`, `inRange`,
//! `chooseVariation`), including its quirks, because compatibility is the
//! point. JS strings are UTF-16 and the SDK hashes `charCodeAt(i)`, so the
//! FNV input here is UTF-16 code units, not UTF-8 bytes.

use serde::{Deserialize, Serialize};

use super::types::{Experiment, HashVersion};
use crate::ids::{ArmKey, ExperimentKey, UserId};

/// FNV-1a 32-bit offset basis.
pub(crate) const FNV_OFFSET_BASIS: u32 = 0x811c_9dc5;
/// FNV-1a 32-bit prime; the SDK's `h + (h<<1) + (h<<4) + (h<<7) + (h<<8) + (h<<24)`
/// is multiplication by exactly this number modulo 2^32.
const FNV_PRIME: u32 = 0x0100_0193;

/// Continue an FNV-1a state over `s` as JS would see it (UTF-16 code units),
/// so `seed + value` can be hashed without building the concatenation.
#[inline]
pub(crate) fn fnv1a_feed(mut h: u32, s: &str) -> u32 {
    let bytes = s.as_bytes();
    // ASCII bytes equal their UTF-16 code units; only fall back to the UTF-16
    // encoder from the first non-ASCII byte, which is a char boundary because
    // everything before it was single-byte.
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x80 {
            return fnv1a_feed_utf16(h, &s[i..]);
        }
        h ^= u32::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

#[cold]
fn fnv1a_feed_utf16(mut h: u32, s: &str) -> u32 {
    for unit in s.encode_utf16() {
        h ^= u32::from(unit);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// "00" to "99": two digits per lookup halves the serial divisions.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

#[inline]
fn put_pair(buf: &mut [u8; 10], at: usize, pair: u32) {
    let i = pair as usize * 2;
    buf[at] = DIGIT_PAIRS[i];
    buf[at + 1] = DIGIT_PAIRS[i + 1];
}

/// Feed the decimal spelling of `n` (JS `n + ""`) without allocating. The
/// digits are produced as five independent pairs rather than by repeated
/// division by ten, which would be a long serial chain on the hot path.
#[inline]
fn fnv1a_feed_decimal(mut h: u32, n: u32) -> u32 {
    let mut buf = [0u8; 10];
    let high = n / 100_000_000;
    let rest = n % 100_000_000;
    let (mid, low) = (rest / 10_000, rest % 10_000);
    put_pair(&mut buf, 0, high);
    put_pair(&mut buf, 2, mid / 100);
    put_pair(&mut buf, 4, mid % 100);
    put_pair(&mut buf, 6, low / 100);
    put_pair(&mut buf, 8, low % 100);
    let digits = n.checked_ilog10().map_or(1, |l| l as usize + 1);
    for &d in &buf[buf.len() - digits..] {
        h ^= u32::from(d);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// GrowthBook's `hashFnv32a`: 32-bit FNV-1a over UTF-16 code units.
pub fn hash_fnv32a(s: &str) -> u32 {
    fnv1a_feed(FNV_OFFSET_BASIS, s)
}

/// GrowthBook's `hash(seed, value, version)`: a bucket in [0, 1), or `None`
/// for an unknown version (the SDK then skips the experiment).
pub fn hash(seed: &str, value: &str, version: u32) -> Option<f64> {
    match version {
        1 => Some(hash_with(seed, value, HashVersion::V1)),
        2 => Some(hash_with(seed, value, HashVersion::V2)),
        _ => None,
    }
}

/// [`hash`] for a version that is known to be supported.
pub fn hash_with(seed: &str, value: &str, version: HashVersion) -> f64 {
    let k = match version {
        HashVersion::V1 => hash_v1_int(seed, value),
        HashVersion::V2 => finish_v2_int(fnv1a_feed(fnv1a_feed(FNV_OFFSET_BASIS, seed), value)),
    };
    to_unit(k, version)
}

/// The integer the v1 hash divides by 1000: `fnv(value + seed) % 1000`.
#[inline]
fn hash_v1_int(seed: &str, value: &str) -> u32 {
    fnv1a_feed(fnv1a_feed(FNV_OFFSET_BASIS, value), seed) % 1000
}

/// The integer the v2 hash divides by 10000, from the state after `seed + value`.
#[inline]
fn finish_v2_int(first_state: u32) -> u32 {
    fnv1a_feed_decimal(FNV_OFFSET_BASIS, first_state) % 10000
}

fn modulus(version: HashVersion) -> u32 {
    match version {
        HashVersion::V1 => 1000,
        HashVersion::V2 => 10000,
    }
}

/// The SDK's final division, e.g. `k / 10000`, exactly as JS rounds it.
#[inline]
fn to_unit(k: u32, version: HashVersion) -> f64 {
    f64::from(k) / f64::from(modulus(version))
}

/// Translate bucket ranges into half-open intervals `[lo, hi)` of the integer
/// `k` whose hash is `k / m` (m = 1000 or 10000). Correctly rounded division
/// by a positive constant is monotone, so `{k : start <= k/m < end}` is
/// exactly such an interval and matching on `k` gives bit-for-bit the same
/// arm as GrowthBook's float comparisons, without a division per user.
pub(crate) fn integer_bounds(ranges: &[BucketRange], version: HashVersion) -> Vec<(u32, u32)> {
    let m = modulus(version);
    // Number of k in [0, m) with k/m < x: a binary search on a monotone predicate.
    let count_below = |x: f64| {
        let (mut lo, mut hi) = (0u32, m);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if to_unit(mid, version) < x {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    };
    ranges
        .iter()
        .map(|r| (count_below(r.start), count_below(r.end)))
        .collect()
}

/// GrowthBook's `getEqualWeights(n)`.
pub fn get_equal_weights(n: usize) -> Vec<f64> {
    vec![1.0 / n as f64; n]
}

/// A half-open interval `[start, end)` of the hash space that maps to one arm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BucketRange {
    /// Inclusive lower end; where the arm's full-coverage range starts.
    pub start: f64,
    /// Exclusive upper end: `start + coverage * weight`.
    pub end: f64,
}

impl BucketRange {
    /// GrowthBook's `inRange`.
    #[inline]
    pub fn contains(&self, n: f64) -> bool {
        n >= self.start && n < self.end
    }
}

/// GrowthBook's `getBucketRanges(numVariations, coverage, weights)`: coverage
/// clamped to [0, 1] (default 1), equal weights if `weights` is missing, of
/// the wrong length or does not sum to within [0.99, 1.01]; each arm keeps the
/// start of its full-coverage range so raising coverage never moves a user
/// between arms.
pub fn get_bucket_ranges(
    num_variations: usize,
    coverage: Option<f64>,
    weights: Option<&[f64]>,
) -> Vec<BucketRange> {
    // Like the SDK's two comparisons, `clamp` lets a NaN coverage through.
    let coverage = coverage.unwrap_or(1.0).clamp(0.0, 1.0);

    let equal = get_equal_weights(num_variations);
    let mut weights = match weights {
        Some(w) if w.len() == num_variations => w,
        _ => &equal[..],
    };
    let total: f64 = weights.iter().fold(0.0, |sum, w| sum + w);
    // Not `!(0.99..=1.01).contains(..)`: the SDK keeps NaN-summing weights.
    #[allow(clippy::manual_range_contains)]
    if total < 0.99 || total > 1.01 {
        weights = &equal[..];
    }

    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|&w| {
            let start = cumulative;
            cumulative += w;
            BucketRange {
                start,
                end: start + coverage * w,
            }
        })
        .collect()
}

/// GrowthBook's `chooseVariation`: the first range holding `n`, or `None`
/// (the SDK's -1) when `n` falls in the uncovered part of the hash space.
#[inline]
pub fn choose_variation(n: f64, ranges: &[BucketRange]) -> Option<usize> {
    ranges.iter().position(|r| r.contains(n))
}

/// Who got which arm, as recorded in `assignments` for sticky bucketing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The experiment assigned in.
    pub experiment: ExperimentKey,
    /// The assigned user, verbatim as hashed.
    pub user_id: UserId,
    /// The arm the user sees.
    pub arm: ArmKey,
    /// Position of `arm` in the experiment's arm list.
    pub arm_index: usize,
    /// The user's GrowthBook hash in [0, 1); logged so a disagreement with
    /// another SDK can be diagnosed.
    pub bucket: f64,
    /// True when a previously recorded arm decided, not the current weights.
    pub sticky: bool,
}

impl Experiment {
    /// The integer behind the user's hash, before GrowthBook's final division.
    #[inline]
    fn bucket_int(&self, user_id: &str) -> u32 {
        match self.hash_version() {
            // The cached salt state makes this `hash(salt, user_id, 2)`.
            HashVersion::V2 => finish_v2_int(fnv1a_feed(self.salt_state(), user_id)),
            HashVersion::V1 => hash_v1_int(self.salt(), user_id),
        }
    }

    /// First arm whose range holds `k`, as `choose_variation` picks.
    #[inline]
    fn arm_for_bucket_int(&self, k: u32) -> Option<usize> {
        self.hash_bounds()
            .iter()
            .position(|&(lo, hi)| k >= lo && k < hi)
    }

    /// The user's hash in [0, 1) under this experiment's salt and version,
    /// computed without allocating.
    #[inline]
    pub fn bucket_of(&self, user_id: &str) -> f64 {
        to_unit(self.bucket_int(user_id), self.hash_version())
    }

    /// Index of the arm the current weights give `user_id`, or `None` when
    /// coverage leaves the user out. Allocation-free: this is the hot path.
    #[inline]
    pub fn hashed_arm_index(&self, user_id: &str) -> Option<usize> {
        self.arm_for_bucket_int(self.bucket_int(user_id))
    }
}

/// Decide a user's arm: a recorded (sticky) arm wins while it still exists in
/// the experiment, so weight changes never move existing users; otherwise the
/// GrowthBook hash picks from the current weights, or `None` when coverage
/// leaves the user out. The experiment's status is not consulted: whether a
/// draft or stopped experiment is served at all is the caller's decision.
pub fn assign(
    experiment: &Experiment,
    user_id: &UserId,
    sticky: Option<&ArmKey>,
) -> Option<Assignment> {
    let k = experiment.bucket_int(user_id.as_str());
    let (arm_index, is_sticky) = match sticky.and_then(|key| experiment.arm_index(key)) {
        Some(i) => (i, true),
        None => (experiment.arm_for_bucket_int(k)?, false),
    };
    let arm = &experiment.arms().get(arm_index)?.key;
    Some(Assignment {
        experiment: experiment.key().clone(),
        user_id: user_id.clone(),
        arm: arm.clone(),
        arm_index,
        bucket: to_unit(k, experiment.hash_version()),
        sticky: is_sticky,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::types::tests::spec_with;
    use crate::experiment::types::ExperimentSpec;
    use statrs::distribution::{ChiSquared, ContinuousCDF};

    const N_USERS: usize = 100_000;

    fn exp(salt: &str, weights: &[f64]) -> Experiment {
        Experiment::new(spec_with(salt, weights)).unwrap()
    }

    fn uid(s: impl Into<String>) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn user(i: usize) -> String {
        format!("user-{i}")
    }

    /// Upper-tail p-value of a chi-square statistic.
    fn chi2_p(stat: f64, df: usize) -> f64 {
        1.0 - ChiSquared::new(df as f64).unwrap().cdf(stat)
    }

    fn goodness_of_fit_p(counts: &[u64], probs: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        let stat: f64 = counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let e = n as f64 * p;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        chi2_p(stat, counts.len() - 1)
    }

    /// The `hash` cases of GrowthBook's cross-SDK test suite
    /// (growthbook/growthbook packages/sdk-js/test/cases.json).
    #[test]
    fn growthbook_hash_cases() {
        let cases: &[(&str, &str, u32, Option<f64>)] = &[
            ("", "a", 1, Some(0.22)),
            ("", "b", 1, Some(0.077)),
            ("b", "a", 1, Some(0.946)),
            ("ef", "d", 1, Some(0.652)),
            ("asdf", "8952klfjas09ujk", 1, Some(0.549)),
            ("", "123", 1, Some(0.011)),
            ("", "___)((*\":&", 1, Some(0.563)),
            ("seed", "a", 2, Some(0.0505)),
            ("seed", "b", 2, Some(0.2696)),
            ("foo", "ab", 2, Some(0.2575)),
            ("foo", "def", 2, Some(0.2019)),
            ("89123klj", "8952klfjas09ujkasdf", 2, Some(0.124)),
            ("90850943850283058242805", "123", 2, Some(0.7516)),
            ("()**(%$##$%#$#", "___)((*\":&", 2, Some(0.0128)),
            ("abc", "def", 99, None),
        ];
        for &(seed, value, version, expected) in cases {
            assert_eq!(
                hash(seed, value, version),
                expected,
                "{seed:?} {value:?} v{version}"
            );
        }
    }

    /// Values from the SDK's own algorithm run under Node (`charCodeAt`), for
    /// non-ASCII seeds where UTF-16 and UTF-8 differ, incl. a surrogate pair.
    #[test]
    fn non_ascii_hashes_follow_js_utf16() {
        assert_eq!(hash("café", "user-1", 2), Some(0.6632));
        assert_eq!(hash("café", "user-1", 1), Some(0.069));
        assert_eq!(hash("ключ", "u42", 2), Some(0.9858));
        assert_eq!(hash("🎬-exp", "u42", 2), Some(0.7079));
        assert_eq!(hash("🎬-exp", "u42", 1), Some(0.0));
        assert_eq!(hash_fnv32a("café"), {
            let mut h = FNV_OFFSET_BASIS;
            for u in [99u32, 97, 102, 233] {
                h = (h ^ u).wrapping_mul(FNV_PRIME);
            }
            h
        });
        assert_eq!(hash("", "", 2), Some(0.2305));
        assert_eq!(hash("", "", 1), Some(0.261));
    }

    #[test]
    fn fnv_matches_the_js_shift_formulation() {
        fn js_style(s: &str) -> u32 {
            let mut h = FNV_OFFSET_BASIS;
            for u in s.encode_utf16() {
                h ^= u32::from(u);
                h = h
                    .wrapping_add(h << 1)
                    .wrapping_add(h << 4)
                    .wrapping_add(h << 7)
                    .wrapping_add(h << 8)
                    .wrapping_add(h << 24);
            }
            h
        }
        for s in ["", "a", "user-123", "ünïcödé", "🎬🎬x", "salt-é-user"] {
            assert_eq!(hash_fnv32a(s), js_style(s), "{s}");
        }
        assert_eq!(fnv1a_feed(hash_fnv32a("ab"), "é🎬"), hash_fnv32a("abé🎬"));
    }

    /// The `getBucketRange` cases of GrowthBook's cross-SDK test suite.
    #[test]
    fn growthbook_bucket_range_cases() {
        type Case<'a> = (usize, f64, Option<&'a [f64]>, &'a [(f64, f64)]);
        let cases: &[Case] = &[
            (2, 1.0, None, &[(0.0, 0.5), (0.5, 1.0)]),
            (2, 0.5, None, &[(0.0, 0.25), (0.5, 0.75)]),
            (2, 0.0, None, &[(0.0, 0.0), (0.5, 0.5)]),
            (
                4,
                1.0,
                None,
                &[(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)],
            ),
            (2, 1.0, Some(&[0.4, 0.6]), &[(0.0, 0.4), (0.4, 1.0)]),
            (
                3,
                1.0,
                Some(&[0.2, 0.3, 0.5]),
                &[(0.0, 0.2), (0.2, 0.5), (0.5, 1.0)],
            ),
            (
                3,
                0.2,
                Some(&[0.2, 0.3, 0.5]),
                &[(0.0, 0.04), (0.2, 0.26), (0.5, 0.6)],
            ),
            (2, -0.2, None, &[(0.0, 0.0), (0.5, 0.5)]),
            (2, 1.5, None, &[(0.0, 0.5), (0.5, 1.0)]),
            (2, 1.0, Some(&[0.4, 0.1]), &[(0.0, 0.5), (0.5, 1.0)]),
            (2, 1.0, Some(&[0.7, 0.6]), &[(0.0, 0.5), (0.5, 1.0)]),
            (
                4,
                1.0,
                Some(&[0.4, 0.4, 0.2]),
                &[(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)],
            ),
            (2, 1.0, Some(&[0.4, 0.5999]), &[(0.0, 0.4), (0.4, 0.9999)]),
        ];
        for (i, &(n, coverage, weights, expected)) in cases.iter().enumerate() {
            let got = get_bucket_ranges(n, Some(coverage), weights);
            assert_eq!(got.len(), expected.len(), "case {i}");
            for (g, &(s, e)) in got.iter().zip(expected) {
                // The suite rounds (JS gives 0.2 * 0.2 = 0.04000000000000001).
                assert!(
                    (g.start - s).abs() < 1e-12 && (g.end - e).abs() < 1e-12,
                    "case {i}: {got:?}"
                );
            }
        }
        assert!(get_bucket_ranges(0, None, None).is_empty());
        assert_eq!(get_equal_weights(4), vec![0.25; 4]);
    }

    #[test]
    fn choose_variation_is_first_matching_half_open_range() {
        let ranges = get_bucket_ranges(3, Some(0.5), Some(&[0.2, 0.3, 0.5]));
        assert_eq!(choose_variation(0.0, &ranges), Some(0));
        assert_eq!(choose_variation(0.0999, &ranges), Some(0));
        assert_eq!(choose_variation(0.1, &ranges), None);
        assert_eq!(choose_variation(0.2, &ranges), Some(1));
        assert_eq!(choose_variation(0.35, &ranges), None);
        assert_eq!(choose_variation(0.74, &ranges), Some(2));
        assert_eq!(choose_variation(0.75, &ranges), None);
        let zero_width = [BucketRange {
            start: 0.5,
            end: 0.5,
        }];
        assert_eq!(choose_variation(0.5, &zero_width), None);
    }

    /// Experiments from GrowthBook's `feature` cases, whose seed defaults to
    /// the feature key: the same user lands in the same variation here.
    #[test]
    fn growthbook_experiment_cases() {
        // "empty experiment rule": seed "feature", hash v1, three equal variations.
        let mut s = spec_with("feature", &[1.0 / 3.0; 3]);
        s.hash_version = HashVersion::V1;
        let e = Experiment::new(s).unwrap();
        for (id, arm, bucket) in [("123", 2, 0.863), ("456", 0, 0.178), ("fds", 1, 0.514)] {
            let a = assign(&e, &uid(id), None).unwrap();
            assert_eq!((a.arm_index, a.bucket), (arm, bucket), "{id}");
        }
        // "creates experiments properly": v2, coverage 0.99, weights 0.1/0.9.
        let mut s = spec_with("feature", &[0.1, 0.9]);
        s.coverage = 0.99;
        let e = Experiment::new(s).unwrap();
        let a = assign(&e, &uid("123"), None).unwrap();
        assert_eq!((a.arm_index, a.bucket), (1, 0.5231));
        // "Support holdout groups" / "passthrough": v2 seeds "holdout" and "experiment".
        assert_eq!(exp("holdout", &[0.99, 0.01]).bucket_of("1"), 0.8043);
        assert_eq!(exp("holdout", &[0.99, 0.01]).hashed_arm_index("1"), Some(0));
        assert_eq!(
            exp("experiment", &[0.5, 0.5]).hashed_arm_index("1"),
            Some(0)
        );
        assert_eq!(exp("experiment", &[0.5, 0.5]).bucket_of("1"), 0.4413);
    }

    #[test]
    fn bucket_of_agrees_with_the_generic_hash() {
        for salt in ["home", "café-ü", "🎬"] {
            for version in [HashVersion::V1, HashVersion::V2] {
                let mut s = spec_with(salt, &[0.5, 0.5]);
                s.hash_version = version;
                let e = Experiment::new(s).unwrap();
                for i in 0..500 {
                    let id = user(i);
                    let expected = hash(salt, &id, u32::from(version.number()));
                    assert_eq!(Some(e.bucket_of(&id)), expected);
                    assert_eq!(Some(hash_with(salt, &id, version)), expected);
                }
            }
        }
    }

    /// The integer fast path must pick exactly what `choose_variation` picks
    /// for every possible hash value, including awkward boundaries.
    #[test]
    fn integer_bounds_agree_with_float_ranges_everywhere() {
        let weight_sets: &[&[f64]] = &[
            &[0.5, 0.5],
            &[0.1, 0.2, 0.7],
            &[1.0 / 3.0; 3],
            &[0.0, 0.3, 0.7],
            &[0.12345, 0.54321, 1.0 - 0.12345 - 0.54321],
            &[0.1; 10],
        ];
        for &weights in weight_sets {
            for coverage in [1.0, 0.99, 0.5, 0.3333, 0.01] {
                for version in [HashVersion::V1, HashVersion::V2] {
                    let mut s = spec_with("bounds", weights);
                    s.coverage = coverage;
                    s.hash_version = version;
                    let e = Experiment::new(s).unwrap();
                    let m = modulus(version);
                    for k in 0..m {
                        let n = f64::from(k) / f64::from(m);
                        let by_int = e
                            .hash_bounds()
                            .iter()
                            .position(|&(lo, hi)| k >= lo && k < hi);
                        assert_eq!(by_int, choose_variation(n, e.bucket_ranges()), "k={k}");
                    }
                }
            }
        }
        // And end to end against the generic functions for real ids.
        let e = exp("e2e", &[0.15, 0.35, 0.5]);
        for i in 0..5000 {
            let id = user(i);
            let n = hash("e2e", &id, 2).unwrap();
            assert_eq!(
                e.hashed_arm_index(&id),
                choose_variation(n, e.bucket_ranges())
            );
        }
    }

    #[test]
    fn assignment_is_deterministic() {
        let e = exp("home-2024", &[0.2, 0.3, 0.5]);
        let again = Experiment::new(e.spec().clone()).unwrap();
        for i in 0..1000 {
            let id = uid(user(i));
            let a = assign(&e, &id, None).unwrap();
            assert_eq!(Some(a.clone()), assign(&again, &id, None));
            assert!(!a.sticky);
            assert_eq!(a.arm, e.arms()[a.arm_index].key);
        }
    }

    fn arm_counts(e: &Experiment, ids: impl Iterator<Item = String>) -> (Vec<u64>, u64) {
        let mut counts = vec![0u64; e.arms().len()];
        let mut out = 0;
        for id in ids {
            match e.hashed_arm_index(&id) {
                Some(i) => counts[i] += 1,
                None => out += 1,
            }
        }
        (counts, out)
    }

    #[test]
    fn assignment_is_uniform_over_weights() {
        for weights in [&[0.25, 0.25, 0.25, 0.25][..], &[0.1, 0.3, 0.6][..]] {
            let e = exp("uniformity", weights);
            let (counts, out) = arm_counts(&e, (0..N_USERS).map(user));
            assert_eq!(out, 0);
            let p = goodness_of_fit_p(&counts, weights);
            assert!(p > 0.001, "weights {weights:?}: counts {counts:?}, p = {p}");
        }
    }

    #[test]
    fn experiments_with_different_salts_are_independent() {
        let a = exp("salt-a", &[0.5, 0.5]);
        let b = exp("salt-b", &[1.0 / 3.0; 3]);
        let mut table = [[0u64; 3]; 2];
        for i in 0..N_USERS {
            let id = user(i);
            if let (Some(x), Some(y)) = (a.hashed_arm_index(&id), b.hashed_arm_index(&id)) {
                table[x][y] += 1;
            }
        }
        let n = N_USERS as f64;
        let rows: Vec<f64> = table.iter().map(|r| r.iter().sum::<u64>() as f64).collect();
        let cols: Vec<f64> = (0..3).map(|j| (table[0][j] + table[1][j]) as f64).collect();
        let mut stat = 0.0;
        for (i, row) in table.iter().enumerate() {
            for (j, &obs) in row.iter().enumerate() {
                let expected = rows[i] * cols[j] / n;
                stat += (obs as f64 - expected).powi(2) / expected;
            }
        }
        let p = chi2_p(stat, 2);
        assert!(p > 0.001, "table {table:?}, p = {p}");
    }

    #[test]
    fn coverage_leaves_the_rest_out() {
        let mut s = spec_with("coverage", &[0.1, 0.3, 0.6]);
        s.coverage = 0.5;
        let e = Experiment::new(s).unwrap();
        let (counts, out) = arm_counts(&e, (0..N_USERS).map(user));
        // Binomial(100k, 0.5): sd = 158; 5 sd either side.
        let expected = N_USERS as f64 * 0.5;
        assert!((out as f64 - expected).abs() < 5.0 * 158.2, "out = {out}");
        // Those who are in still follow the weights.
        assert!(
            goodness_of_fit_p(&counts, &[0.1, 0.3, 0.6]) > 0.001,
            "{counts:?}"
        );
        let outsider = (0..N_USERS)
            .map(user)
            .find(|id| e.hashed_arm_index(id).is_none())
            .unwrap();
        assert_eq!(assign(&e, &uid(outsider), None), None);
    }

    #[test]
    fn raising_coverage_never_moves_an_included_user() {
        let mut s = spec_with("ramp", &[0.5, 0.5]);
        s.coverage = 0.2;
        let narrow = Experiment::new(s.clone()).unwrap();
        s.coverage = 0.8;
        let wide = Experiment::new(s).unwrap();
        for i in 0..10_000 {
            let id = user(i);
            if let Some(arm) = narrow.hashed_arm_index(&id) {
                assert_eq!(wide.hashed_arm_index(&id), Some(arm));
            }
        }
    }

    #[test]
    fn sticky_arm_wins_while_it_exists() {
        let e = exp("sticky", &[0.5, 0.5]);
        let id = uid("user-7");
        let hashed = assign(&e, &id, None).unwrap();
        let other = e.arms()[1 - hashed.arm_index].key.clone();
        let a = assign(&e, &id, Some(&other)).unwrap();
        assert_eq!((a.arm, a.sticky), (other, true));
        assert_eq!(a.bucket, hashed.bucket);

        // An arm that is gone from the experiment no longer binds the user.
        let gone = ArmKey::parse("retired").unwrap();
        assert_eq!(assign(&e, &id, Some(&gone)), Some(hashed));

        // Stickiness also beats coverage: an enrolled user stays enrolled.
        let mut s: ExperimentSpec = e.spec().clone();
        s.coverage = 0.01;
        let narrow = Experiment::new(s).unwrap();
        let outsider = (0..1000)
            .map(|i| uid(user(i)))
            .find(|u| narrow.hashed_arm_index(u.as_str()).is_none())
            .unwrap();
        let kept = e.arms()[0].key.clone();
        assert_eq!(assign(&narrow, &outsider, Some(&kept)).unwrap().arm, kept);
    }

    #[test]
    fn weight_change_keeps_sticky_users_and_moves_new_ones() {
        let before = exp("reweight", &[0.5, 0.5]);
        let recorded: Vec<(UserId, ArmKey)> = (0..20_000)
            .map(|i| {
                let id = uid(user(i));
                let arm = assign(&before, &id, None).unwrap().arm;
                (id, arm)
            })
            .collect();

        let after = before.with_weights(vec![0.1, 0.9]).unwrap();
        let mut moved_without_sticky = 0;
        for (id, arm) in &recorded {
            let a = assign(&after, id, Some(arm)).unwrap();
            assert_eq!(&a.arm, arm);
            if assign(&after, id, None).unwrap().arm != *arm {
                moved_without_sticky += 1;
            }
        }
        // Without the record, everyone in [0.1, 0.5) would have switched arms.
        assert!(moved_without_sticky > 7_000, "{moved_without_sticky}");

        let (counts, _) = arm_counts(&after, (20_000..20_000 + N_USERS).map(user));
        let p = goodness_of_fit_p(&counts, &[0.1, 0.9]);
        assert!(p > 0.001, "new users {counts:?}, p = {p}");
    }

    #[test]
    fn decimal_feed_matches_to_string() {
        for n in [
            0u32,
            7,
            9,
            10,
            99,
            100,
            65535,
            99_999_999,
            100_000_000,
            123_456_789,
            999_999_999,
            1_000_000_000,
            u32::MAX,
        ] {
            assert_eq!(
                fnv1a_feed_decimal(FNV_OFFSET_BASIS, n),
                hash_fnv32a(&n.to_string())
            );
        }
    }
}
