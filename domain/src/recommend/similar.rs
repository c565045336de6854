//! "More like this": for every movie a model knows, the movies most like it,
//! as the worker precomputes them for `GET /v1/movies/{id}/similar`.
//!
//! Item-kNN already keeps each movie's nearest neighbours (cosine over who
//! watched what). ALS ranks by the cosine of item factors: the same notion
//! of taste its user lists come from, so "similar" and "for you" agree.
//! Popularity and the cold-start model know no similarity and give none.

use ndarray::{s, Array2, Axis};

use super::format::TrainedModel;
use super::{top_k, ScoredItem};
use crate::ids::MovieId;

/// Rows of the item-item product computed at a time: 512 × items scores in
/// memory (16 MB at 8,000 movies) instead of items × items.
const BLOCK: usize = 512;

/// For each movie the model knows, up to `k` others most like it, best
/// first (a movie is never its own neighbour). Ties go to the movie the
/// model indexed first, as everywhere in `recommend`.
pub fn similar_movies(model: &TrainedModel, k: usize) -> Vec<(MovieId, Vec<ScoredItem>)> {
    match model {
        TrainedModel::ItemKnn(m) => m
            .items()
            .iter()
            .map(|&movie| {
                let items = m
                    .neighbours(movie)
                    .into_iter()
                    .filter(|(other, _)| *other != movie)
                    .take(k)
                    .map(|(movie_id, score)| ScoredItem { movie_id, score })
                    .collect();
                (movie, items)
            })
            .collect(),
        TrainedModel::Als(m) => by_factor_cosine(m.items(), m.item_factors(), k),
        TrainedModel::Popularity(_) | TrainedModel::ColdStart(_) => Vec::new(),
    }
}

/// Top `k` by cosine of the rows of `factors` (one row per movie of `items`).
fn by_factor_cosine(
    items: &[MovieId],
    factors: &Array2<f32>,
    k: usize,
) -> Vec<(MovieId, Vec<ScoredItem>)> {
    let n = items.len().min(factors.nrows());
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let mut unit = factors.slice(s![..n, ..]).to_owned();
    for mut row in unit.axis_iter_mut(Axis(0)) {
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row /= norm;
        }
    }
    let transposed = unit.t();
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let scores = unit.slice(s![start..end, ..]).dot(&transposed);
        for (offset, row) in scores.axis_iter(Axis(0)).enumerate() {
            let me = start + offset;
            let candidates: Vec<(u32, f32)> = row
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != me)
                .map(|(j, &score)| (j as u32, score))
                .collect();
            let items_like = top_k(candidates, k)
                .into_iter()
                .map(|(j, score)| ScoredItem {
                    movie_id: items[j as usize],
                    score,
                })
                .collect();
            out.push((items[me], items_like));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn movie(id: i64) -> MovieId {
        MovieId::parse(id).unwrap()
    }

    #[test]
    fn factor_cosine_ranks_the_nearest_direction_first_and_never_the_movie_itself() {
        let items = [movie(1), movie(2), movie(3), movie(4)];
        let factors = array![[1.0f32, 0.0], [2.0, 0.1], [0.0, 1.0], [-1.0, 0.0]];
        let lists = by_factor_cosine(&items, &factors, 2);
        assert_eq!(lists.len(), 4);
        let (first, like_first) = &lists[0];
        assert_eq!(*first, movie(1));
        let ids: Vec<MovieId> = like_first.iter().map(|s| s.movie_id).collect();
        // Same direction (length does not matter), then orthogonal; never itself.
        assert_eq!(ids, vec![movie(2), movie(3)]);
        assert!((like_first[0].score - 0.99875).abs() < 1e-3);
        assert!(lists
            .iter()
            .all(|(m, l)| l.iter().all(|s| s.movie_id != *m)));
    }

    #[test]
    fn blocks_give_the_same_lists_as_one_pass() {
        let n = BLOCK + 37;
        let items: Vec<MovieId> = (1..=n as i64).map(movie).collect();
        let factors = Array2::from_shape_fn((n, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let lists = by_factor_cosine(&items, &factors, 5);
        assert_eq!(lists.len(), n);
        // Row beyond the first block: its best match is found across blocks.
        let (m, like) = &lists[BLOCK + 10];
        assert_eq!(*m, items[BLOCK + 10]);
        assert_eq!(like.len(), 5);
        assert!(like.windows(2).all(|w| w[0].score >= w[1].score));
    }
}
