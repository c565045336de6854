//! Deterministic MovieLens-like data with a known ground truth.
//!
//! Real logs cannot tell us whether a recommender found what a user *would*
//! like; here every user has a hidden taste, so offline metrics and the
//! traffic simulator can both be checked against it. The generative story:
//!
//! * movies belong to *niches* (a franchise, a director, a scene: ~25 movies
//!   sharing an audience, one or two genres and an era), get 1-3 of 18 genres
//!   (MovieLens frequencies), a release year near their niche's, a hidden
//!   quality and a Zipf popularity (rank order random, so independent of genre);
//! * users get genre tastes from a sparse Dirichlet (most people love a couple
//!   of genres), a few favourite niches within those genres, a preferred era,
//!   a "mainstream" share and a log-normal activity level;
//! * each view is mainstream (drawn by global popularity, whatever the taste),
//!   niche-driven (a favourite niche, then a movie by popularity within it) or
//!   genre-driven (a genre from the taste, a movie by popularity within it,
//!   kept more often when its year suits the user);
//! * a view becomes a like with a probability rising with [`SyntheticData::hidden_affinity`];
//! * timestamps increase within each user's activity window in ~180 days.
//!
//! Each user draws from their own seeded stream, so a user's data does not
//! depend on how many users come before them.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Exp, Gamma, LogNormal, Normal};
use serde::{Deserialize, Serialize};

use crate::ids::{MovieId, UserId};
use crate::recommend::{CatalogEntry, Dataset, Interaction, InteractionKind};
use crate::ValidationError;

/// Genre names as MovieLens spells them.
pub const GENRES: [&str; 18] = [
    "Drama",
    "Comedy",
    "Action",
    "Thriller",
    "Romance",
    "Adventure",
    "Crime",
    "Horror",
    "Sci-Fi",
    "Fantasy",
    "Children",
    "Mystery",
    "Documentary",
    "Animation",
    "War",
    "Musical",
    "Western",
    "Film-Noir",
];

/// Relative genre frequencies, roughly those of ml-latest, in [`GENRES`] order.
const GENRE_PRIOR: [f64; 18] = [
    0.22, 0.16, 0.08, 0.08, 0.08, 0.05, 0.05, 0.05, 0.04, 0.03, 0.03, 0.03, 0.03, 0.02, 0.02, 0.01,
    0.01, 0.01,
];

const DAY_SECS: i64 = 86_400;
const LAST_YEAR: i32 = 2024;
const FIRST_YEAR: i32 = 1920;
/// Draws per view before a user's remaining picks are given up as exhausted.
const MAX_ATTEMPTS: usize = 64;

/// Preset scales: small for unit tests, medium for the offline report, large for load tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyntheticSize {
    /// ~200 movies, 500 users, ~20k interactions.
    Small,
    /// ~2k movies, 20k users, ~1M interactions.
    Medium,
    /// ~20k movies, 200k users, ~10M interactions.
    Large,
}

/// Every knob of the generator; presets come from [`SyntheticParams::new`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SyntheticParams {
    /// Seed of every random stream; the same params give the same data.
    pub seed: u64,
    /// Catalog size.
    pub n_movies: usize,
    /// Number of users.
    pub n_users: usize,
    /// Mean distinct movies viewed per user (log-normal across users).
    pub mean_views_per_user: f64,
    /// Log-normal sigma of activity: a few heavy users, many light ones.
    pub activity_sigma: f64,
    /// Floor on views per user, so every user can be split for evaluation.
    pub min_views_per_user: usize,
    /// Zipf exponent of movie popularity.
    pub zipf_exponent: f64,
    /// Average niche size; the catalog has `n_movies / movies_per_niche` niches.
    pub movies_per_niche: f64,
    /// Favourite niches per user.
    pub niches_per_user: usize,
    /// Dirichlet concentration of tastes; small means users love few genres.
    pub taste_concentration: f64,
    /// Mean share of a user's views drawn by global popularity regardless of taste.
    pub mainstream_share: f64,
    /// Of the taste-driven views, the share picked from favourite niches (the rest by genre).
    pub niche_share: f64,
    /// Standard deviation (years) of how far from their preferred era users wander.
    pub era_width_years: f64,
    /// Length of the observed period.
    pub days: u32,
    /// Unix time the period starts at.
    pub start_ts: i64,
}

impl SyntheticParams {
    /// The preset for `size`, seeded with `seed`.
    pub fn new(size: SyntheticSize, seed: u64) -> Self {
        let (n_movies, n_users) = match size {
            SyntheticSize::Small => (200, 500),
            SyntheticSize::Medium => (2_000, 20_000),
            SyntheticSize::Large => (20_000, 200_000),
        };
        Self {
            seed,
            n_movies,
            n_users,
            mean_views_per_user: 36.0,
            activity_sigma: 0.7,
            min_views_per_user: 8,
            zipf_exponent: 0.9,
            movies_per_niche: 25.0,
            niches_per_user: 4,
            taste_concentration: 0.25,
            mainstream_share: 0.15,
            niche_share: 0.7,
            era_width_years: 12.0,
            days: 180,
            // 2024-01-01T00:00:00Z.
            start_ts: 1_704_067_200,
        }
    }

    /// Reject knobs the generator cannot honour.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ValidationError::new(field, "must be a positive number"))
            }
        };
        let share = |field: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(ValidationError::new(field, "must be within [0, 1]"))
            }
        };
        if self.n_movies == 0 || self.n_movies > i32::MAX as usize {
            return Err(ValidationError::new(
                "n_movies",
                "must be between 1 and 2^31",
            ));
        }
        if self.n_users == 0 || self.n_users > u32::MAX as usize {
            return Err(ValidationError::new(
                "n_users",
                "must be between 1 and 2^32",
            ));
        }
        positive("mean_views_per_user", self.mean_views_per_user)?;
        positive("activity_sigma", self.activity_sigma)?;
        positive("zipf_exponent", self.zipf_exponent)?;
        positive("movies_per_niche", self.movies_per_niche)?;
        positive("taste_concentration", self.taste_concentration)?;
        positive("era_width_years", self.era_width_years)?;
        share("mainstream_share", self.mainstream_share)?;
        share("niche_share", self.niche_share)?;
        if self.niches_per_user == 0 {
            return Err(ValidationError::new(
                "niches_per_user",
                "must be at least 1",
            ));
        }
        if self.days == 0 {
            return Err(ValidationError::new("days", "must be at least 1"));
        }
        Ok(())
    }

    fn n_niches(&self) -> usize {
        ((self.n_movies as f64 / self.movies_per_niche).ceil() as usize).clamp(1, self.n_movies)
    }
}

/// Weight-proportional sampling by binary search over a cumulative sum.
#[derive(Debug, Clone, Default)]
struct Sampler {
    items: Vec<u32>,
    cumulative: Vec<f64>,
}

impl Sampler {
    fn from_weights(weights: &[f64]) -> Self {
        let mut s = Self::default();
        for (i, &w) in weights.iter().enumerate() {
            s.push(i as u32, w);
        }
        s
    }

    fn push(&mut self, item: u32, weight: f64) {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        self.items.push(item);
        self.cumulative.push(total + weight.max(0.0));
    }

    fn sample(&self, rng: &mut impl Rng) -> Option<u32> {
        let total = *self.cumulative.last()?;
        let x = rng.random::<f64>() * total;
        let pos = self.cumulative.partition_point(|&c| c <= x);
        self.items
            .get(pos.min(self.items.len().saturating_sub(1)))
            .copied()
    }
}

/// A generated world: catalog, users, their interactions and the hidden truth behind them.
#[derive(Debug, Clone)]
pub struct SyntheticData {
    /// Movies with ids `1..=n_movies`.
    pub catalog: Vec<CatalogEntry>,
    /// Users `u1..=uN`, in dataset index order.
    pub users: Vec<UserId>,
    /// All interactions; every catalog movie is an item (index = id − 1) even if never seen.
    pub dataset: Dataset,
    params: SyntheticParams,
    /// Row-major `n_users × GENRES.len()`, each row summing to 1.
    tastes: Vec<f32>,
    /// Row-major `n_users × niches_per_user` of (niche, weight relative to the favourite).
    favourite_niches: Vec<(u32, f32)>,
    preferred_year: Vec<f32>,
    /// Bit `g` set when the movie has genre `GENRES[g]`.
    movie_genres: Vec<u32>,
    movie_niche: Vec<u32>,
    movie_year: Vec<i32>,
    movie_quality: Vec<f32>,
}

/// What kind of scene a niche is: its genres and its era.
struct Niche {
    genres: u32,
    year: f64,
}

impl SyntheticData {
    /// Generate the world described by `params`.
    pub fn generate(params: &SyntheticParams) -> Result<Self, ValidationError> {
        params.validate()?;
        let n_genres = GENRES.len();
        let n_niches = params.n_niches();

        let mut rng = StdRng::seed_from_u64(params.seed);
        let age = Exp::new(1.0 / 16.0).map_err(invalid("age"))?;
        let normal = Normal::new(0.0, 1.0).map_err(invalid("normal"))?;
        let genre_prior = Sampler::from_weights(&GENRE_PRIOR);
        let pick_genre = |rng: &mut StdRng| 1u32 << genre_prior.sample(rng).unwrap_or(0);

        let niches: Vec<Niche> = (0..n_niches)
            .map(|_| {
                let mut genres = pick_genre(&mut rng);
                if rng.random::<f64>() < 0.6 {
                    genres |= pick_genre(&mut rng);
                }
                let year = LAST_YEAR as f64 - age.sample(&mut rng);
                Niche { genres, year }
            })
            .collect();
        // niches_by_genre[g]: niches whose profile includes genre g.
        let niches_by_genre: Vec<Vec<u32>> = (0..n_genres)
            .map(|g| {
                (0..n_niches as u32)
                    .filter(|&k| niches[k as usize].genres & (1 << g) != 0)
                    .collect()
            })
            .collect();

        let mut catalog = Vec::with_capacity(params.n_movies);
        let mut movie_genres = Vec::with_capacity(params.n_movies);
        let mut movie_niche = Vec::with_capacity(params.n_movies);
        let mut movie_year = Vec::with_capacity(params.n_movies);
        let mut movie_quality = Vec::with_capacity(params.n_movies);
        for idx in 0..params.n_movies {
            // The first movies seed every niche so none is empty; the rest land anywhere.
            let k = if idx < n_niches {
                idx
            } else {
                rng.random_range(0..n_niches)
            };
            let niche = &niches[k];
            let mut mask = niche.genres;
            if mask.count_ones() > 1 && rng.random::<f64>() < 0.3 {
                // Not every movie of a two-genre niche carries both labels.
                mask &= !(1 << mask.trailing_zeros());
            }
            if rng.random::<f64>() < 0.25 {
                mask |= pick_genre(&mut rng);
            }
            let year = (niche.year + 4.0 * normal.sample(&mut rng)).round() as i32;
            let year = year.clamp(FIRST_YEAR, LAST_YEAR);
            let quality = 1.0 / (1.0 + (-normal.sample(&mut rng)).exp());
            movie_genres.push(mask);
            movie_niche.push(k as u32);
            movie_year.push(year);
            movie_quality.push(quality as f32);
            catalog.push(CatalogEntry {
                movie_id: MovieId::parse(idx as i64 + 1)?,
                title: title(&mut rng),
                year: Some(year),
                genres: (0..n_genres)
                    .filter(|g| mask & (1 << g) != 0)
                    .map(|g| GENRES[g].to_owned())
                    .collect(),
            });
        }

        // Zipf weights over a random rank order, so popularity is independent of genre.
        let mut rank: Vec<u32> = (0..params.n_movies as u32).collect();
        for i in (1..rank.len()).rev() {
            rank.swap(i, rng.random_range(0..=i));
        }
        let mut popularity = vec![0f64; params.n_movies];
        for (r, &movie) in rank.iter().enumerate() {
            popularity[movie as usize] = 1.0 / ((r + 1) as f64).powf(params.zipf_exponent);
        }
        let mut global = Sampler::default();
        let mut per_genre = vec![Sampler::default(); n_genres];
        let mut per_niche = vec![Sampler::default(); n_niches];
        for (m, &w) in popularity.iter().enumerate() {
            global.push(m as u32, w);
            per_niche[movie_niche[m] as usize].push(m as u32, w);
            for (g, sampler) in per_genre.iter_mut().enumerate() {
                if movie_genres[m] & (1 << g) != 0 {
                    sampler.push(m as u32, w);
                }
            }
        }

        let mut data = Self {
            catalog,
            users: Vec::with_capacity(params.n_users),
            dataset: Dataset::new(),
            params: *params,
            tastes: Vec::with_capacity(params.n_users * n_genres),
            favourite_niches: Vec::with_capacity(params.n_users * params.niches_per_user),
            preferred_year: Vec::with_capacity(params.n_users),
            movie_genres,
            movie_niche,
            movie_year,
            movie_quality,
        };

        let shapes: Vec<Gamma<f64>> = GENRE_PRIOR
            .iter()
            .map(|p| Gamma::new(params.taste_concentration * p * n_genres as f64, 1.0))
            .collect::<Result<_, _>>()
            .map_err(invalid("taste_concentration"))?;
        let unit_gamma = Gamma::new(1.0, 1.0).map_err(invalid("niche weights"))?;
        let mainstream = mainstream_distribution(params.mainstream_share)?;
        let mu = params.mean_views_per_user.ln() - params.activity_sigma.powi(2) / 2.0;
        let activity = LogNormal::new(mu, params.activity_sigma).map_err(invalid("activity"))?;
        let span = params.days as i64 * DAY_SECS;
        let max_views = (params.n_movies / 3).max(1);

        // `stamp[m] == u + 1` marks movie `m` as already seen by user `u`, without clearing.
        let mut stamp = vec![0u32; params.n_movies];
        let mut interactions: Vec<Interaction> = Vec::new();
        let mut picks: Vec<u32> = Vec::new();
        let mut times: Vec<i64> = Vec::new();
        for u in 0..params.n_users {
            let mut rng = StdRng::seed_from_u64(mix(params.seed, u as u64));
            data.users.push(UserId::parse(format!("u{}", u + 1))?);

            let mut taste: Vec<f64> = shapes.iter().map(|g| g.sample(&mut rng)).collect();
            let total: f64 = taste.iter().sum();
            if !(total.is_finite() && total > 0.0) {
                taste = GENRE_PRIOR.to_vec();
            }
            let total: f64 = taste.iter().sum();
            data.tastes.extend(taste.iter().map(|t| (t / total) as f32));
            let taste_sampler = Sampler::from_weights(&taste);

            // Favourite niches follow the taste: pick a genre, then one of its niches.
            let mut favourites: Vec<(u32, f64)> = Vec::with_capacity(params.niches_per_user);
            for _ in 0..params.niches_per_user {
                let g = taste_sampler.sample(&mut rng).unwrap_or(0) as usize;
                let pool = &niches_by_genre[g];
                let k = if pool.is_empty() {
                    rng.random_range(0..n_niches as u32)
                } else {
                    pool[rng.random_range(0..pool.len())]
                };
                let w = unit_gamma.sample(&mut rng);
                match favourites.iter_mut().find(|f| f.0 == k) {
                    Some(f) => f.1 += w,
                    None => favourites.push((k, w)),
                }
            }
            let top = favourites.iter().map(|f| f.1).fold(0.0, f64::max);
            let niche_sampler =
                Sampler::from_weights(&favourites.iter().map(|f| f.1).collect::<Vec<_>>());
            for j in 0..params.niches_per_user {
                // Merged duplicates leave empty slots: (niche 0, weight 0) never matters.
                let (k, w) = favourites.get(j).copied().unwrap_or((0, 0.0));
                let rel = if top > 0.0 { w / top } else { 0.0 };
                data.favourite_niches.push((k, rel as f32));
            }

            let preferred = LAST_YEAR as f64 - age.sample(&mut rng) * 0.8;
            data.preferred_year.push(preferred as f32);
            let mainstream_share = mainstream.sample(&mut rng);

            let wanted = (activity.sample(&mut rng).round() as usize)
                .clamp(params.min_views_per_user.min(max_views), max_views);
            picks.clear();
            let marker = u as u32 + 1;
            'views: for _ in 0..wanted {
                for _ in 0..MAX_ATTEMPTS {
                    let candidate = if rng.random::<f64>() < mainstream_share {
                        global.sample(&mut rng)
                    } else if rng.random::<f64>() < params.niche_share {
                        niche_sampler
                            .sample(&mut rng)
                            .and_then(|j| favourites.get(j as usize))
                            .and_then(|&(k, _)| per_niche[k as usize].sample(&mut rng))
                    } else {
                        let g = taste_sampler.sample(&mut rng).unwrap_or(0) as usize;
                        per_genre[g].sample(&mut rng).filter(|&m| {
                            let fit = data.era_fit(u, m as usize);
                            rng.random::<f64>() < 0.3 + 0.7 * fit
                        })
                    };
                    if let Some(m) = candidate {
                        if stamp[m as usize] != marker {
                            stamp[m as usize] = marker;
                            picks.push(m);
                            continue 'views;
                        }
                    }
                }
                break;
            }

            // Activity window: starts anywhere in the period, lasts a random share of what is left.
            let start = rng.random_range(0..span);
            let length = ((span - start) as f64 * rng.random_range(0.2..=1.0)) as i64;
            times.clear();
            times.extend((0..picks.len()).map(|_| start + rng.random_range(0..=length)));
            times.sort_unstable();
            for (&m, &t) in picks.iter().zip(&times) {
                let ts = params.start_ts + t;
                let user = u as u32;
                interactions.push(Interaction {
                    user,
                    item: m,
                    kind: InteractionKind::View,
                    ts,
                });
                let p_like = 0.1 + 0.8 * data.affinity_at(u, m as usize);
                if rng.random::<f64>() < p_like {
                    interactions.push(Interaction {
                        user,
                        item: m,
                        kind: InteractionKind::Like,
                        ts: ts + rng.random_range(30..600),
                    });
                }
            }
        }

        data.dataset.users = data.users.clone();
        data.dataset.items = data.catalog.iter().map(|c| c.movie_id).collect();
        data.dataset.interactions = interactions;
        data.dataset.reindex();
        Ok(data)
    }

    /// The parameters this world was generated from.
    pub fn params(&self) -> &SyntheticParams {
        &self.params
    }

    /// How much `user` would enjoy `movie`, in [0, 1]: taste fit (genre fit
    /// relative to their favourite genre, and how much they love the movie's
    /// niche) × era fit × movie quality. `None` for ids outside this world.
    /// Drives likes here and clicks in simulations.
    pub fn hidden_affinity(&self, user: &UserId, movie: MovieId) -> Option<f64> {
        let u = self.dataset.find_user(user)? as usize;
        let m = usize::try_from(movie.get() - 1).ok()?;
        (m < self.movie_genres.len()).then(|| self.affinity_at(u, m))
    }

    /// [`Self::hidden_affinity`] by dense indices (user `u{u+1}`, movie `m + 1`), for hot loops.
    pub fn affinity_at(&self, user: usize, movie: usize) -> f64 {
        let (Some(taste), Some(&mask), Some(&niche)) = (
            self.taste_at(user),
            self.movie_genres.get(movie),
            self.movie_niche.get(movie),
        ) else {
            return 0.0;
        };
        let favourite = taste.iter().copied().fold(0f32, f32::max);
        let best = taste
            .iter()
            .enumerate()
            .filter(|(g, _)| mask & (1 << g) != 0)
            .map(|(_, &t)| t)
            .fold(0f32, f32::max);
        let genre_fit = if favourite > 0.0 {
            (best / favourite) as f64
        } else {
            0.0
        };
        let n = self.params.niches_per_user;
        let niche_fit = self
            .favourite_niches
            .get(user * n..(user + 1) * n)
            .unwrap_or_default()
            .iter()
            .filter(|f| f.0 == niche)
            .map(|f| f.1 as f64)
            .fold(0.0, f64::max);
        let quality = self.movie_quality.get(movie).copied().unwrap_or(0.0) as f64;
        (0.4 * genre_fit + 0.6 * niche_fit)
            * (0.6 + 0.4 * self.era_fit(user, movie))
            * (0.5 + 0.5 * quality)
    }

    /// A user's hidden genre weights in [`GENRES`] order (summing to 1).
    pub fn taste(&self, user: &UserId) -> Option<&[f32]> {
        self.taste_at(self.dataset.find_user(user)? as usize)
    }

    /// The niche (audience cluster) a movie belongs to; `None` outside the catalog.
    pub fn niche_of(&self, movie: MovieId) -> Option<u32> {
        let m = usize::try_from(movie.get() - 1).ok()?;
        self.movie_niche.get(m).copied()
    }

    fn taste_at(&self, user: usize) -> Option<&[f32]> {
        let n = GENRES.len();
        self.tastes.get(user * n..(user + 1) * n)
    }

    /// 1 at the user's preferred year, falling off as a Gaussian in years.
    fn era_fit(&self, user: usize, movie: usize) -> f64 {
        let (Some(&pref), Some(&year)) =
            (self.preferred_year.get(user), self.movie_year.get(movie))
        else {
            return 0.0;
        };
        let z = (year as f64 - pref as f64) / self.params.era_width_years;
        (-0.5 * z * z).exp()
    }
}

/// Per-user mainstream share: Beta with the configured mean, so some users
/// only watch blockbusters and others almost never do.
fn mainstream_distribution(mean: f64) -> Result<MainstreamShare, ValidationError> {
    if mean <= 0.0 || mean >= 1.0 {
        return Ok(MainstreamShare::Fixed(mean));
    }
    let a = 2.0;
    let b = a * (1.0 - mean) / mean;
    Ok(MainstreamShare::Beta(
        Beta::new(a, b).map_err(invalid("mainstream_share"))?,
    ))
}

enum MainstreamShare {
    Fixed(f64),
    Beta(Beta<f64>),
}

impl MainstreamShare {
    fn sample(&self, rng: &mut StdRng) -> f64 {
        match self {
            Self::Fixed(v) => *v,
            Self::Beta(b) => b.sample(rng),
        }
    }
}

/// Map a distribution-constructor error to the parameter that caused it.
fn invalid<E>(field: &'static str) -> impl Fn(E) -> ValidationError {
    move |_| ValidationError::new(field, "out of range")
}

/// SplitMix64 finaliser: decorrelates per-user seeds derived from one seed.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn title(rng: &mut StdRng) -> String {
    const FIRST: [&str; 24] = [
        "Silent", "Crimson", "Last", "Hidden", "Broken", "Golden", "Midnight", "Lost", "Wild",
        "Frozen", "Electric", "Distant", "Burning", "Secret", "Iron", "Glass", "Savage", "Quiet",
        "Endless", "Fallen", "Northern", "Paper", "Velvet", "Hollow",
    ];
    const SECOND: [&str; 24] = [
        "River", "Empire", "Summer", "Garden", "Horizon", "Kingdom", "Letters", "Machine",
        "Harbor", "Witness", "Station", "Frontier", "Season", "Mirror", "Promise", "Orchard",
        "Signal", "Valley", "Voyage", "Circus", "Island", "Storm", "Bridge", "Dream",
    ];
    let a = FIRST[rng.random_range(0..FIRST.len())];
    let b = SECOND[rng.random_range(0..SECOND.len())];
    match rng.random_range(0..10) {
        0 => format!("{a} {b} II"),
        1 | 2 => format!("The {a} {b}"),
        _ => format!("{a} {b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SyntheticData {
        SyntheticData::generate(&SyntheticParams::new(SyntheticSize::Small, 7)).unwrap()
    }

    #[test]
    fn small_preset_has_the_advertised_shape() {
        let d = small();
        assert_eq!(d.catalog.len(), 200);
        assert_eq!(d.users.len(), 500);
        assert_eq!(d.dataset.n_items(), 200);
        let n = d.dataset.interactions.len();
        assert!((15_000..=25_000).contains(&n), "{n} interactions");
        assert!(d
            .catalog
            .iter()
            .all(|c| (1..=3).contains(&c.genres.len()) && c.year.is_some()));
        let likes = d
            .dataset
            .interactions
            .iter()
            .filter(|i| i.kind == InteractionKind::Like)
            .count();
        assert!(likes > n / 10 && likes < n / 2, "{likes} likes of {n}");
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let a = small();
        let b = small();
        assert_eq!(a.dataset.interactions, b.dataset.interactions);
        assert_eq!(a.catalog, b.catalog);
        let c = SyntheticData::generate(&SyntheticParams::new(SyntheticSize::Small, 8)).unwrap();
        assert_ne!(a.dataset.interactions, c.dataset.interactions);
    }

    #[test]
    fn timestamps_increase_per_user_within_the_period() {
        let d = small();
        let p = d.params();
        let end = p.start_ts + p.days as i64 * DAY_SECS + 600;
        let mut last = vec![i64::MIN; d.users.len()];
        for i in &d.dataset.interactions {
            assert!(i.ts >= p.start_ts && i.ts <= end);
            if i.kind == InteractionKind::View {
                assert!(i.ts >= last[i.user as usize]);
                last[i.user as usize] = i.ts;
            }
        }
    }

    #[test]
    fn affinity_follows_taste_and_drives_likes() {
        let d = small();
        let u = UserId::parse("u1").unwrap();
        let taste = d.taste(&u).unwrap();
        assert!((taste.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        for m in 1..=200 {
            let a = d.hidden_affinity(&u, MovieId::parse(m).unwrap()).unwrap();
            assert!((0.0..=1.0).contains(&a));
        }
        assert!(d
            .hidden_affinity(&u, MovieId::parse(201).unwrap())
            .is_none());
        assert!(d
            .hidden_affinity(&UserId::parse("u999").unwrap(), MovieId::parse(1).unwrap())
            .is_none());

        // Liked views have clearly higher affinity than views that were not liked.
        let (mut liked, mut all) = (Vec::new(), Vec::new());
        for i in &d.dataset.interactions {
            let a = d.affinity_at(i.user as usize, i.item as usize);
            match i.kind {
                InteractionKind::Like => liked.push(a),
                InteractionKind::View => all.push(a),
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&liked) > mean(&all) + 0.05);
    }

    #[test]
    fn users_view_what_suits_their_hidden_taste() {
        let d = small();
        // Mean affinity of what users viewed vs of the whole catalog for the same users.
        let views: Vec<_> = d
            .dataset
            .interactions
            .iter()
            .filter(|i| i.kind == InteractionKind::View)
            .collect();
        let viewed = views
            .iter()
            .map(|i| d.affinity_at(i.user as usize, i.item as usize))
            .sum::<f64>()
            / views.len() as f64;
        let catalog = views
            .iter()
            .map(|i| {
                (0..200)
                    .map(|m| d.affinity_at(i.user as usize, m))
                    .sum::<f64>()
                    / 200.0
            })
            .sum::<f64>()
            / views.len() as f64;
        assert!(viewed > 1.5 * catalog, "{viewed} vs {catalog}");
        let in_favourite_niche = views
            .iter()
            .filter(|i| {
                let n = d.params().niches_per_user;
                let u = i.user as usize;
                d.favourite_niches[u * n..(u + 1) * n]
                    .iter()
                    .any(|f| f.1 > 0.0 && f.0 == d.movie_niche[i.item as usize])
            })
            .count();
        assert!(
            in_favourite_niche * 2 > views.len(),
            "{in_favourite_niche} of {}",
            views.len()
        );
    }

    #[test]
    fn rejects_invalid_params() {
        let mut p = SyntheticParams::new(SyntheticSize::Small, 1);
        p.mainstream_share = 1.5;
        assert_eq!(
            SyntheticData::generate(&p).unwrap_err().field,
            "mainstream_share"
        );
    }
}
