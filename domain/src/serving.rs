//! Composing the list a user is served: the arm's precomputed list first,
//! then ever broader fallbacks, never a movie twice, never one already seen.
//!
//! Pure, so the rules the api follows on every request are tested in-process.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ids::MovieId;
use crate::recommend::ScoredItem;

/// A set of movie ids on the serving path. foldhash rather than std's SipHash:
/// every request hashes a few dozen ids, and the ids come from Marquee's own
/// catalog and history, not from a caller who could choose colliding keys.
pub type MovieSet = HashSet<MovieId, foldhash::fast::RandomState>;

/// A map keyed by movie id on the serving path (see [`MovieSet`]).
pub type MovieMap<V> = HashMap<MovieId, V, foldhash::fast::RandomState>;

/// Where a served movie came from, best source first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemSource {
    /// The arm's algorithm, precomputed for this user.
    Model,
    /// Recent interactions across all users (`hot:movies`).
    Hot,
    /// Popular by history in PostgreSQL, used when the caches are cold or down.
    Popular,
    /// Any catalog movie, so a non-empty catalog never yields an empty answer.
    Catalog,
}

impl ItemSource {
    /// The name it is serialised as.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Hot => "hot",
            Self::Popular => "popular",
            Self::Catalog => "catalog",
        }
    }
}

/// One movie chosen for the list.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub movie_id: MovieId,
    /// The source's score (a model score, a hot-movie count); comparable only within one source.
    pub score: f32,
    pub source: ItemSource,
}

/// What the serving path knows of a catalogue movie for filtering: its year
/// and its genres as bits of [`GenreIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MovieMeta {
    pub year: Option<i32>,
    pub genres: u64,
}

/// Genre names (lower case) to bits, for up to 64 genres: a catalogue's
/// genres are a few dozen (MovieLens has 20), and a bit test per candidate is
/// what keeps a filtered list as cheap as an unfiltered one.
#[derive(Debug, Clone, Default)]
pub struct GenreIndex {
    bits: HashMap<String, u64>,
}

impl GenreIndex {
    /// The bits of `genres`, adding names not seen yet while bits remain;
    /// a 65th distinct genre gets none (and no filter can ask for it).
    pub fn bits_of<'a>(&mut self, genres: impl IntoIterator<Item = &'a str>) -> u64 {
        let mut mask = 0;
        for genre in genres {
            let name = genre.trim().to_lowercase();
            let next = self.bits.len();
            let bit = match self.bits.get(&name) {
                Some(bit) => *bit,
                None if next < 64 => {
                    let bit = 1u64 << next;
                    self.bits.insert(name, bit);
                    bit
                }
                None => 0,
            };
            mask |= bit;
        }
        mask
    }

    /// The bit of a genre a caller names, if the catalogue has it.
    pub fn bit(&self, genre: &str) -> Option<u64> {
        self.bits.get(&genre.trim().to_lowercase()).copied()
    }
}

/// What a caller narrowed the list to: any of `genres` (0: any genre), a
/// range of years (a movie without a year fails a year bound), and movies
/// to leave out.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub genres: u64,
    pub year_from: Option<i32>,
    pub year_to: Option<i32>,
    pub exclude: MovieSet,
}

impl ListFilter {
    /// Whether the filter narrows anything.
    pub fn is_empty(&self) -> bool {
        self.genres == 0
            && self.year_from.is_none()
            && self.year_to.is_none()
            && self.exclude.is_empty()
    }

    /// Whether `movie` (with what the catalogue knows of it) passes.
    pub fn admits(&self, movie: MovieId, meta: Option<&MovieMeta>) -> bool {
        if self.exclude.contains(&movie) {
            return false;
        }
        let year = meta.and_then(|m| m.year);
        if self
            .year_from
            .is_some_and(|from| year.is_none_or(|y| y < from))
            || self.year_to.is_some_and(|to| year.is_none_or(|y| y > to))
        {
            return false;
        }
        self.genres == 0 || meta.is_some_and(|m| m.genres & self.genres != 0)
    }
}

/// Take up to `limit` movies from `sources` in order, skipping movies already
/// taken, movies in `seen`, and movies `known` rejects (e.g. not in the catalog).
///
/// If the user has seen every candidate, the list is filled again from the
/// seen ones: a rewatch suggestion beats an empty row.
pub fn compose(
    limit: usize,
    sources: &[(ItemSource, &[ScoredItem])],
    seen: &MovieSet,
    known: impl Fn(MovieId) -> bool,
) -> Vec<Candidate> {
    let mut taken = MovieSet::with_capacity_and_hasher(limit * 2, Default::default());
    let mut out = Vec::with_capacity(limit);
    for pass_allows_seen in [false, true] {
        for (source, items) in sources {
            for item in items.iter() {
                if out.len() >= limit {
                    return out;
                }
                if (!pass_allows_seen && seen.contains(&item.movie_id))
                    || !known(item.movie_id)
                    || !taken.insert(item.movie_id)
                {
                    continue;
                }
                out.push(Candidate {
                    movie_id: item.movie_id,
                    score: item.score,
                    source: *source,
                });
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_admits_by_any_genre_a_year_range_and_not_excluded() {
        let mut index = GenreIndex::default();
        let drama = index.bits_of(["Drama"]);
        let crime_drama = index.bits_of(["crime", " DRAMA "]);
        assert_eq!(
            crime_drama & drama,
            drama,
            "names are case- and space-insensitive"
        );
        let m = |id: i64| MovieId::parse(id).unwrap();
        let meta = |year, genres| MovieMeta { year, genres };
        let filter = ListFilter {
            genres: index.bit("crime").unwrap(),
            year_from: Some(1990),
            year_to: Some(1999),
            exclude: [m(3)].into_iter().collect(),
        };
        assert!(filter.admits(m(1), Some(&meta(Some(1995), crime_drama))));
        assert!(
            !filter.admits(m(2), Some(&meta(Some(1995), drama))),
            "wrong genre"
        );
        assert!(
            !filter.admits(m(3), Some(&meta(Some(1995), crime_drama))),
            "excluded"
        );
        assert!(
            !filter.admits(m(4), Some(&meta(Some(2001), crime_drama))),
            "too late"
        );
        assert!(
            !filter.admits(m(5), Some(&meta(None, crime_drama))),
            "no year"
        );
        assert!(!filter.admits(m(6), None), "unknown to the catalogue");
        assert!(ListFilter::default().admits(m(6), None));
        assert!(ListFilter::default().is_empty() && !filter.is_empty());
        assert_eq!(index.bit("western"), None);
    }

    fn items(ids: &[i64]) -> Vec<ScoredItem> {
        ids.iter()
            .enumerate()
            .map(|(i, &m)| ScoredItem {
                movie_id: MovieId::parse(m).unwrap(),
                score: 1.0 / (i + 1) as f32,
            })
            .collect()
    }

    fn ids(list: &[Candidate]) -> Vec<i64> {
        list.iter().map(|c| c.movie_id.get()).collect()
    }

    fn seen(ids: &[i64]) -> MovieSet {
        ids.iter().map(|&m| MovieId::parse(m).unwrap()).collect()
    }

    #[test]
    fn model_first_then_fallbacks_without_duplicates_or_seen() {
        let model = items(&[1, 2, 3]);
        let hot = items(&[3, 4, 2, 5]);
        let popular = items(&[6, 7]);
        let list = compose(
            5,
            &[
                (ItemSource::Model, &model),
                (ItemSource::Hot, &hot),
                (ItemSource::Popular, &popular),
            ],
            &seen(&[2, 5]),
            |_| true,
        );
        assert_eq!(ids(&list), vec![1, 3, 4, 6, 7]);
        assert_eq!(list[0].source, ItemSource::Model);
        assert_eq!(list[2].source, ItemSource::Hot);
        assert_eq!(list[3].source, ItemSource::Popular);
    }

    #[test]
    fn unknown_movies_are_skipped() {
        let model = items(&[1, 2, 3]);
        let list = compose(
            10,
            &[(ItemSource::Model, &model)],
            &MovieSet::default(),
            |m| m.get() != 2,
        );
        assert_eq!(ids(&list), vec![1, 3]);
    }

    #[test]
    fn a_user_who_saw_everything_still_gets_a_list() {
        let catalog = items(&[1, 2]);
        let list = compose(
            10,
            &[(ItemSource::Catalog, &catalog)],
            &seen(&[1, 2]),
            |_| true,
        );
        assert_eq!(ids(&list), vec![1, 2]);
    }

    #[test]
    fn respects_the_limit_and_an_empty_catalog_gives_nothing() {
        let model = items(&[1, 2, 3, 4]);
        assert_eq!(
            compose(
                2,
                &[(ItemSource::Model, &model)],
                &MovieSet::default(),
                |_| true
            )
            .len(),
            2
        );
        assert!(compose(5, &[], &MovieSet::default(), |_| true).is_empty());
        assert!(compose(
            0,
            &[(ItemSource::Model, &model)],
            &MovieSet::default(),
            |_| true
        )
        .is_empty());
    }
}
