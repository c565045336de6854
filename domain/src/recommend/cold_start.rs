//! Genre-based lists for users without history: the best a recommender can do
//! before a user has interacted is popularity within the genres they asked for.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ids::{MovieId, UserId};
use crate::recommend::{CatalogEntry, Recommender, ScoredItem};
use crate::ValidationError;

/// List lengths kept in the model; they bound its size, not quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdStartParams {
    /// Movies kept per genre.
    pub per_genre: usize,
    /// Length of the interleaved list served when no genre is known.
    pub overall: usize,
}

impl Default for ColdStartParams {
    fn default() -> Self {
        Self {
            per_genre: 100,
            overall: 500,
        }
    }
}

/// One genre's movies, most popular first, with their popularity as score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenreList {
    /// Genre name as the catalog spells it.
    pub genre: String,
    /// Movies of the genre, most popular first.
    pub items: Vec<ScoredItem>,
}

/// Per-genre popularity lists plus a genre-interleaved list for users with no signal at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdStartModel {
    /// Ordered by the genre's total popularity, so interleaving starts with mainstream genres.
    genres: Vec<GenreList>,
    overall: Vec<ScoredItem>,
}

impl ColdStartModel {
    /// Build from the catalog and a popularity ranking (e.g. [`PopularityModel::ranked`]);
    /// movies missing from the ranking count as popularity 0.
    ///
    /// [`PopularityModel::ranked`]: crate::recommend::popularity::PopularityModel::ranked
    pub fn fit(
        catalog: &[CatalogEntry],
        popularity: &[ScoredItem],
        params: &ColdStartParams,
    ) -> Result<Self, ValidationError> {
        if params.per_genre == 0 {
            return Err(ValidationError::new("per_genre", "must be at least 1"));
        }
        let pop: HashMap<MovieId, f32> = popularity.iter().map(|s| (s.movie_id, s.score)).collect();
        let score_of = |m: MovieId| pop.get(&m).copied().unwrap_or(0.0).max(0.0);

        let mut by_genre: HashMap<&str, Vec<ScoredItem>> = HashMap::new();
        let mut seen = HashSet::new();
        let mut everything = Vec::new();
        for entry in catalog {
            if !seen.insert(entry.movie_id) {
                continue;
            }
            let item = ScoredItem {
                movie_id: entry.movie_id,
                score: score_of(entry.movie_id),
            };
            everything.push(item);
            let mut genres: Vec<&str> = entry.genres.iter().map(String::as_str).collect();
            genres.sort_unstable();
            genres.dedup();
            for g in genres {
                by_genre.entry(g).or_default().push(item);
            }
        }

        let mut genres: Vec<(f64, GenreList)> = by_genre
            .into_iter()
            .map(|(genre, mut items)| {
                let mass = items.iter().map(|s| s.score as f64).sum::<f64>();
                sort_by_score(&mut items);
                items.truncate(params.per_genre);
                (
                    mass,
                    GenreList {
                        genre: genre.to_owned(),
                        items,
                    },
                )
            })
            .collect();
        genres.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.genre.cmp(&b.1.genre)));
        let genres: Vec<GenreList> = genres.into_iter().map(|(_, g)| g).collect();

        // Round-robin over genres: a user we know nothing about sees breadth,
        // then the rest by plain popularity (covers genre-less movies).
        sort_by_score(&mut everything);
        let lists: Vec<&[ScoredItem]> = genres.iter().map(|g| g.items.as_slice()).collect();
        let overall = interleave(&lists, &everything, params.overall, &HashSet::new());
        Ok(Self { genres, overall })
    }

    /// All genre lists, mainstream genres first.
    pub fn genres(&self) -> &[GenreList] {
        &self.genres
    }

    /// One genre's list (case-insensitive name), empty when the catalog has no such genre.
    pub fn top_for_genre(&self, genre: &str) -> &[ScoredItem] {
        self.find(genre).map_or(&[], |g| g.items.as_slice())
    }

    /// The genre-interleaved list served when nothing is known.
    pub fn overall(&self) -> &[ScoredItem] {
        &self.overall
    }

    /// Top `k` for a user who picked `genres` (e.g. at sign-up): their genres'
    /// lists interleaved, then the overall list. Scores are `1 / (rank + 1)`
    /// because interleaving breaks the order of raw popularity.
    pub fn recommend_for_genres(&self, genres: &[String], k: usize) -> Vec<ScoredItem> {
        self.recommend_for_genres_excluding(genres, k, &HashSet::new())
    }

    /// [`Self::recommend_for_genres`] that never returns a movie in `exclude`.
    pub fn recommend_for_genres_excluding(
        &self,
        genres: &[String],
        k: usize,
        exclude: &HashSet<MovieId>,
    ) -> Vec<ScoredItem> {
        let mut lists: Vec<&[ScoredItem]> = Vec::new();
        for g in genres {
            if let Some(list) = self.find(g) {
                if !lists
                    .iter()
                    .any(|l| std::ptr::eq(*l, list.items.as_slice()))
                {
                    lists.push(list.items.as_slice());
                }
            }
        }
        interleave(&lists, &self.overall, k, exclude)
    }

    fn find(&self, genre: &str) -> Option<&GenreList> {
        self.genres
            .iter()
            .find(|g| g.genre.eq_ignore_ascii_case(genre.trim()))
    }
}

impl Recommender for ColdStartModel {
    /// The overall list: this model never personalises, whoever asks.
    fn recommend(&self, _user: &UserId, k: usize, exclude: &HashSet<MovieId>) -> Vec<ScoredItem> {
        interleave(&[], &self.overall, k, exclude)
    }
}

fn sort_by_score(items: &mut [ScoredItem]) {
    items.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.movie_id.cmp(&b.movie_id))
    });
}

/// Take one unseen movie from each list in turn, then fill from `fill`; rank-based scores.
fn interleave(
    lists: &[&[ScoredItem]],
    fill: &[ScoredItem],
    k: usize,
    exclude: &HashSet<MovieId>,
) -> Vec<ScoredItem> {
    let mut chosen: Vec<MovieId> = Vec::with_capacity(k);
    let mut taken: HashSet<MovieId> = HashSet::new();
    let mut cursors = vec![0usize; lists.len()];
    let mut push = |m: MovieId, chosen: &mut Vec<MovieId>| {
        if chosen.len() < k && !exclude.contains(&m) && taken.insert(m) {
            chosen.push(m);
        }
    };
    loop {
        let mut progressed = false;
        for (list, cursor) in lists.iter().zip(cursors.iter_mut()) {
            // Skip what is already taken or excluded so each turn adds one movie.
            while let Some(item) = list.get(*cursor) {
                *cursor += 1;
                let before = chosen.len();
                push(item.movie_id, &mut chosen);
                if chosen.len() > before {
                    progressed = true;
                    break;
                }
            }
        }
        if !progressed || chosen.len() >= k {
            break;
        }
    }
    for item in fill {
        if chosen.len() >= k {
            break;
        }
        push(item.movie_id, &mut chosen);
    }
    chosen
        .into_iter()
        .enumerate()
        .map(|(rank, movie_id)| ScoredItem {
            movie_id,
            score: 1.0 / (rank as f32 + 1.0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movie(n: i64) -> MovieId {
        MovieId::parse(n).unwrap()
    }

    fn entry(id: i64, genres: &[&str]) -> CatalogEntry {
        CatalogEntry {
            movie_id: movie(id),
            title: format!("Movie {id}"),
            year: None,
            genres: genres.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn ids(recs: &[ScoredItem]) -> Vec<i64> {
        recs.iter().map(|s| s.movie_id.get()).collect()
    }

    fn model() -> ColdStartModel {
        let catalog = vec![
            entry(1, &["Drama"]),
            entry(2, &["Drama", "Comedy"]),
            entry(3, &["Comedy"]),
            entry(4, &["Horror"]),
            entry(5, &["Drama"]),
            entry(6, &[]),
        ];
        // Popularity: 1 > 2 > 6 > 3 > 4; 5 unknown (0).
        let pop: Vec<ScoredItem> = [(1, 10.0), (2, 8.0), (6, 5.0), (3, 4.0), (4, 1.0)]
            .into_iter()
            .map(|(m, score)| ScoredItem {
                movie_id: movie(m),
                score,
            })
            .collect();
        ColdStartModel::fit(&catalog, &pop, &ColdStartParams::default()).unwrap()
    }

    #[test]
    fn genre_lists_are_ranked_by_popularity() {
        let m = model();
        assert_eq!(ids(m.top_for_genre("drama")), vec![1, 2, 5]);
        assert_eq!(ids(m.top_for_genre("Comedy")), vec![2, 3]);
        assert!(m.top_for_genre("Western").is_empty());
        let order: Vec<&str> = m.genres().iter().map(|g| g.genre.as_str()).collect();
        assert_eq!(order, vec!["Drama", "Comedy", "Horror"]);
    }

    #[test]
    fn overall_interleaves_genres_then_fills_by_popularity() {
        // Round 1: Drama 1, Comedy 2, Horror 4. Round 2: Drama 2 taken → 5, Comedy 3.
        assert_eq!(ids(model().overall()), vec![1, 2, 4, 5, 3, 6]);
    }

    #[test]
    fn recommend_for_genres_interleaves_the_chosen_genres() {
        let m = model();
        let recs = m.recommend_for_genres(&["Horror".into(), "comedy".into()], 4);
        assert_eq!(ids(&recs), vec![4, 2, 3, 1]);
        assert_eq!(recs[0].score, 1.0);
        assert_eq!(recs[1].score, 0.5);
        let none = m.recommend_for_genres(&["Opera".into()], 2);
        assert_eq!(
            ids(&none),
            vec![1, 2],
            "unknown genres fall back to overall"
        );
    }

    #[test]
    fn recommender_serves_overall_minus_excluded() {
        let m = model();
        let exclude: HashSet<MovieId> = [movie(1), movie(4)].into_iter().collect();
        let recs = m.recommend(&UserId::parse("new").unwrap(), 3, &exclude);
        assert_eq!(ids(&recs), vec![2, 5, 3]);
    }
}
