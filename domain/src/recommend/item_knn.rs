//! Item-item cosine kNN: "people who watched what you watched also watched".
//!
//! Similarities come from sparse co-occurrence accumulation (one pass per item
//! over the users who touched it), so the cost is the sum of squared user
//! history lengths and memory stays O(items × neighbours), never O(items²).
//! Only the top `neighbours` similarities per item are kept: the tail is noise
//! that costs model size and serving time without improving rankings.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::csr::Csr;
use crate::ids::{MovieId, UserId};
use crate::recommend::{top_k, Dataset, InteractionKind, Recommender, ScoredItem};
use crate::ValidationError;

/// Knobs of the kNN fit; defaults were tuned on the medium synthetic set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ItemKnnParams {
    /// Neighbours kept per item (M).
    pub neighbours: usize,
    /// Weight of a user-item pair that was only viewed.
    pub view_weight: f32,
    /// Weight of a liked pair; larger because a like says more than a view.
    pub like_weight: f32,
    /// Added to the cosine denominator so pairs seen together by only a couple
    /// of users do not get a perfect similarity by chance.
    pub shrinkage: f32,
    /// Top short lists up with the most-interacted items (score 0) and serve
    /// those to unknown users, so callers always get `k` items when possible.
    pub fill_with_popular: bool,
}

impl Default for ItemKnnParams {
    fn default() -> Self {
        Self {
            neighbours: 20,
            view_weight: 1.0,
            like_weight: 2.0,
            shrinkage: 10.0,
            fill_with_popular: true,
        }
    }
}

impl ItemKnnParams {
    /// Reject parameters that cannot produce a usable model.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.neighbours == 0 {
            return Err(ValidationError::new("neighbours", "must be at least 1"));
        }
        for (field, w) in [
            ("view_weight", self.view_weight),
            ("like_weight", self.like_weight),
        ] {
            if !(w.is_finite() && w > 0.0) {
                return Err(ValidationError::new(field, "must be a positive number"));
            }
        }
        if !(self.shrinkage.is_finite() && self.shrinkage >= 0.0) {
            return Err(ValidationError::new(
                "shrinkage",
                "must be a non-negative number",
            ));
        }
        Ok(())
    }

    fn weight(&self, kind: InteractionKind) -> f32 {
        match kind {
            InteractionKind::View => self.view_weight,
            InteractionKind::Like => self.like_weight,
        }
    }
}

/// Fitted kNN: top neighbours per item plus each training user's weighted history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ItemKnnRepr")]
pub struct ItemKnnModel {
    // Field order is the wire format (bincode is positional): keep it equal to `ItemKnnRepr`.
    params: ItemKnnParams,
    items: Vec<MovieId>,
    /// Item indices ordered by movie id, for serve-time lookups without a hash map.
    items_by_id: Vec<u32>,
    neighbours: Csr,
    /// Training users sorted, so a lookup is a binary search and the encoding is deterministic.
    users: Vec<UserId>,
    /// Row `r` is the history of `users[r]`, items sorted by index.
    histories: Csr,
    /// Item indices, most interacted first, for topping lists up.
    popular: Vec<u32>,
}

/// The serialised fields; deserialising goes through [`ItemKnnModel::from_repr`]
/// so a model is checked before it can serve.
#[derive(Deserialize)]
struct ItemKnnRepr {
    params: ItemKnnParams,
    items: Vec<MovieId>,
    items_by_id: Vec<u32>,
    neighbours: Csr,
    users: Vec<UserId>,
    histories: Csr,
    popular: Vec<u32>,
}

impl TryFrom<ItemKnnRepr> for ItemKnnModel {
    type Error = ValidationError;

    fn try_from(repr: ItemKnnRepr) -> Result<Self, Self::Error> {
        Self::from_repr(repr)
    }
}

impl ItemKnnModel {
    fn from_repr(r: ItemKnnRepr) -> Result<Self, ValidationError> {
        let n = r.items.len();
        r.neighbours.check("neighbours", n, n)?;
        r.histories.check("histories", r.users.len(), n)?;
        for u in 0..r.users.len() {
            if r.histories.row(u).0.windows(2).any(|w| w[0] >= w[1]) {
                return Err(ValidationError::new("histories", "rows must be sorted"));
            }
        }
        if r.users.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ValidationError::new("users", "must be sorted and unique"));
        }
        let by_id_ok = r.items_by_id.len() == n
            && r.items_by_id.iter().all(|&i| (i as usize) < n)
            && r.items_by_id
                .windows(2)
                .all(|w| r.items[w[0] as usize] < r.items[w[1] as usize]);
        if !by_id_ok {
            return Err(ValidationError::new(
                "items_by_id",
                "must order every item by movie id",
            ));
        }
        if r.popular.iter().any(|&i| i as usize >= n) {
            return Err(ValidationError::new("popular", "item index out of range"));
        }
        Ok(Self {
            params: r.params,
            items: r.items,
            items_by_id: r.items_by_id,
            neighbours: r.neighbours,
            users: r.users,
            histories: r.histories,
            popular: r.popular,
        })
    }

    /// Fit on all interactions of `data`; a pair's weight is its strongest kind,
    /// so repeated views do not inflate it.
    pub fn fit(data: &Dataset, params: &ItemKnnParams) -> Result<Self, ValidationError> {
        params.validate()?;
        let n_items = data.n_items();
        let by_user = user_rows(data, params);
        let by_item = by_user.transpose(n_items);

        let norms: Vec<f32> = (0..n_items)
            .map(|i| by_item.row(i).1.iter().map(|w| w * w).sum::<f32>().sqrt())
            .collect();

        let mut acc = vec![0f32; n_items];
        let mut touched: Vec<u32> = Vec::new();
        let mut neighbours = Csr {
            ptr: vec![0],
            ..Csr::default()
        };
        for i in 0..n_items {
            let (users, wus) = by_item.row(i);
            for (&u, &wui) in users.iter().zip(wus) {
                let (items, wjs) = by_user.row(u as usize);
                for (&j, &wuj) in items.iter().zip(wjs) {
                    if j as usize == i {
                        continue;
                    }
                    let slot = &mut acc[j as usize];
                    if *slot == 0.0 {
                        touched.push(j);
                    }
                    *slot += wui * wuj;
                }
            }
            let candidates: Vec<(u32, f32)> = touched
                .iter()
                .map(|&j| {
                    let denom = norms[i] * norms[j as usize] + params.shrinkage;
                    (j, acc[j as usize] / denom)
                })
                .filter(|&(_, s)| s > 0.0)
                .collect();
            for &j in &touched {
                acc[j as usize] = 0.0;
            }
            touched.clear();
            for (j, s) in top_k(candidates, params.neighbours) {
                neighbours.idx.push(j);
                neighbours.val.push(s);
            }
            neighbours.ptr.push(neighbours.idx.len());
        }

        // Re-order user rows by user id so lookups can binary-search.
        let mut order: Vec<u32> = (0..data.n_users() as u32).collect();
        order.sort_by(|&a, &b| data.users[a as usize].cmp(&data.users[b as usize]));
        let mut histories = Csr {
            ptr: vec![0],
            ..Csr::default()
        };
        let mut users = Vec::with_capacity(order.len());
        for &u in &order {
            let (items, ws) = by_user.row(u as usize);
            if items.is_empty() {
                continue;
            }
            users.push(data.users[u as usize].clone());
            histories.idx.extend_from_slice(items);
            histories.val.extend_from_slice(ws);
            histories.ptr.push(histories.idx.len());
        }

        let mut popular: Vec<u32> = (0..n_items as u32).collect();
        popular.sort_by(|&a, &b| {
            let (ca, cb) = (
                by_item.row(a as usize).0.len(),
                by_item.row(b as usize).0.len(),
            );
            cb.cmp(&ca).then(a.cmp(&b))
        });
        popular.retain(|&i| !by_item.row(i as usize).0.is_empty());

        let mut items_by_id: Vec<u32> = (0..n_items as u32).collect();
        items_by_id.sort_by_key(|&i| data.items[i as usize]);

        Ok(Self {
            params: *params,
            items: data.items.clone(),
            items_by_id,
            neighbours,
            users,
            histories,
            popular,
        })
    }

    /// The parameters the model was fitted with, for the manifest.
    pub fn params(&self) -> &ItemKnnParams {
        &self.params
    }

    /// Every movie the model knows, in index order.
    pub fn items(&self) -> &[MovieId] {
        &self.items
    }

    /// Most similar movies to `movie`, best first; empty for a movie the model never saw.
    pub fn neighbours(&self, movie: MovieId) -> Vec<(MovieId, f32)> {
        let Some(i) = self.item_index(movie) else {
            return Vec::new();
        };
        let (idx, sims) = self.neighbours.row(i as usize);
        idx.iter()
            .zip(sims)
            .filter_map(|(&j, &s)| self.items.get(j as usize).map(|&m| (m, s)))
            .collect()
    }

    /// Rank for a history given at serve time (e.g. fresher than the model);
    /// movies the model does not know are ignored, movies in `history` are never returned.
    pub fn recommend_from_history(
        &self,
        history: &[(MovieId, InteractionKind)],
        k: usize,
        exclude: &HashSet<MovieId>,
    ) -> Vec<ScoredItem> {
        let mut row: Vec<(u32, f32)> = history
            .iter()
            .filter_map(|&(m, kind)| self.item_index(m).map(|i| (i, self.params.weight(kind))))
            .collect();
        row.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        row.dedup_by_key(|p| p.0);
        let (idx, val): (Vec<u32>, Vec<f32>) = row.into_iter().unzip();
        self.score_row(&idx, &val, k, exclude)
    }

    fn item_index(&self, movie: MovieId) -> Option<u32> {
        self.items_by_id
            .binary_search_by(|&i| self.items.get(i as usize).cmp(&Some(&movie)))
            .ok()
            .and_then(|pos| self.items_by_id.get(pos).copied())
    }

    /// `idx` must be sorted: seen-item checks binary-search it.
    fn score_row(
        &self,
        idx: &[u32],
        val: &[f32],
        k: usize,
        exclude: &HashSet<MovieId>,
    ) -> Vec<ScoredItem> {
        let allowed = |j: u32| {
            idx.binary_search(&j).is_err()
                && self
                    .items
                    .get(j as usize)
                    .is_some_and(|m| !exclude.contains(m))
        };
        let mut scores: HashMap<u32, f32> = HashMap::new();
        for (&i, &w) in idx.iter().zip(val) {
            let (nbrs, sims) = self.neighbours.row(i as usize);
            for (&j, &s) in nbrs.iter().zip(sims) {
                *scores.entry(j).or_insert(0.0) += w * s;
            }
        }
        let candidates: Vec<(u32, f32)> = scores.into_iter().filter(|&(j, _)| allowed(j)).collect();
        let mut best = top_k(candidates, k);
        if self.params.fill_with_popular && best.len() < k {
            let chosen: HashSet<u32> = best.iter().map(|p| p.0).collect();
            let fill: Vec<(u32, f32)> = self
                .popular
                .iter()
                .filter(|&&j| allowed(j) && !chosen.contains(&j))
                .take(k - best.len())
                .map(|&j| (j, 0.0))
                .collect();
            best.extend(fill);
        }
        best.into_iter()
            .filter_map(|(j, score)| {
                self.items
                    .get(j as usize)
                    .map(|&movie_id| ScoredItem { movie_id, score })
            })
            .collect()
    }
}

impl Recommender for ItemKnnModel {
    /// Known users: sum of similarity × the user's weight over their training
    /// items, seen items excluded, topped up with popular items at score 0 when
    /// `fill_with_popular`. Unknown users: the popular list, or nothing when
    /// filling is off (the serving layer then uses cold start).
    fn recommend(&self, user: &UserId, k: usize, exclude: &HashSet<MovieId>) -> Vec<ScoredItem> {
        match self.users.binary_search(user) {
            Ok(r) => {
                let (idx, val) = self.histories.row(r);
                self.score_row(idx, val, k, exclude)
            }
            Err(_) => self.score_row(&[], &[], k, exclude),
        }
    }
}

/// One row per dataset user with deduplicated items (strongest kind wins), sorted by item.
fn user_rows(data: &Dataset, params: &ItemKnnParams) -> Csr {
    let n_users = data.n_users();
    let mut counts = vec![0usize; n_users + 1];
    for it in &data.interactions {
        if (it.user as usize) < n_users && (it.item as usize) < data.n_items() {
            counts[it.user as usize + 1] += 1;
        }
    }
    for u in 0..n_users {
        counts[u + 1] += counts[u];
    }
    let mut next = counts.clone();
    let mut pairs = vec![(0u32, 0f32); data.interactions.len()];
    for it in &data.interactions {
        if (it.user as usize) < n_users && (it.item as usize) < data.n_items() {
            let slot = &mut next[it.user as usize];
            pairs[*slot] = (it.item, params.weight(it.kind));
            *slot += 1;
        }
    }
    let mut out = Csr {
        ptr: Vec::with_capacity(n_users + 1),
        idx: Vec::with_capacity(pairs.len()),
        val: Vec::with_capacity(pairs.len()),
    };
    out.ptr.push(0);
    for u in 0..n_users {
        let row = &mut pairs[counts[u]..counts[u + 1]];
        row.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut last = None;
        for &(i, w) in row.iter() {
            if last != Some(i) {
                out.idx.push(i);
                out.val.push(w);
                last = Some(i);
            }
        }
        out.ptr.push(out.idx.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn movie(n: i64) -> MovieId {
        MovieId::parse(n).unwrap()
    }

    /// a: {1,2,3}, b: {1,2}, c: {2,3}, d: {4}. All views, weight 1.
    fn data() -> Dataset {
        let mut d = Dataset::new();
        for (u, ms) in [
            ("a", &[1, 2, 3][..]),
            ("b", &[1, 2]),
            ("c", &[2, 3]),
            ("d", &[4]),
        ] {
            for &m in ms {
                d.push(&user(u), movie(m), InteractionKind::View, 0);
            }
        }
        d
    }

    fn plain() -> ItemKnnParams {
        ItemKnnParams {
            shrinkage: 0.0,
            fill_with_popular: false,
            ..ItemKnnParams::default()
        }
    }

    #[test]
    fn neighbours_are_cosines_of_co_occurrence() {
        let m = ItemKnnModel::fit(&data(), &plain()).unwrap();
        // |1| = √2 (a,b), |2| = √3 (a,b,c), |3| = √2 (a,c).
        // cos(1,2) = 2/√6, cos(1,3) = 1/2, cos(2,3) = 2/√6.
        let n1 = m.neighbours(movie(1));
        assert_eq!(n1.len(), 2);
        assert_eq!(n1[0].0, movie(2));
        assert!((n1[0].1 - 2.0 / 6f32.sqrt()).abs() < 1e-6);
        assert_eq!(n1[1].0, movie(3));
        assert!((n1[1].1 - 0.5).abs() < 1e-6);
        let n2 = m.neighbours(movie(2));
        assert_eq!(
            n2.iter().map(|p| p.0.get()).collect::<Vec<_>>(),
            vec![1, 3],
            "ties broken by index"
        );
        assert!(m.neighbours(movie(4)).is_empty(), "nobody co-watched 4");
        assert!(m.neighbours(movie(99)).is_empty());
    }

    #[test]
    fn keeps_only_top_m_and_shrinkage_lowers_scores() {
        let params = ItemKnnParams {
            neighbours: 1,
            shrinkage: 1.0,
            ..plain()
        };
        let m = ItemKnnModel::fit(&data(), &params).unwrap();
        let n1 = m.neighbours(movie(1));
        assert_eq!(n1.len(), 1);
        assert!((n1[0].1 - 2.0 / (6f32.sqrt() + 1.0)).abs() < 1e-6);
    }

    #[test]
    fn recommends_unseen_items_by_summed_similarity() {
        let m = ItemKnnModel::fit(&data(), &plain()).unwrap();
        // b saw {1,2}: candidate 3 scores cos(1,3) + cos(2,3) = 0.5 + 2/√6.
        let recs = m.recommend(&user("b"), 5, &HashSet::new());
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].movie_id, movie(3));
        assert!((recs[0].score - (0.5 + 2.0 / 6f32.sqrt())).abs() < 1e-6);
        let exclude: HashSet<MovieId> = [movie(3)].into_iter().collect();
        assert!(m.recommend(&user("b"), 5, &exclude).is_empty());
        assert!(m.recommend(&user("nobody"), 5, &HashSet::new()).is_empty());
    }

    #[test]
    fn duplicate_kinds_merge_and_fill_tops_up_with_popular() {
        let mut d = data();
        // e liked 1 and viewed 3: 2 is the neighbour of both.
        d.push(&user("e"), movie(1), InteractionKind::Like, 0);
        d.push(&user("e"), movie(1), InteractionKind::View, 0);
        d.push(&user("e"), movie(3), InteractionKind::View, 0);
        let params = ItemKnnParams {
            fill_with_popular: true,
            ..plain()
        };
        let m = ItemKnnModel::fit(&d, &params).unwrap();
        let recs = m.recommend(&user("e"), 2, &HashSet::new());
        assert_eq!(recs[0].movie_id, movie(2));
        assert_eq!(recs[1].movie_id, movie(4), "filled from popularity");
        assert_eq!(recs[1].score, 0.0);
        let cold = m.recommend(&user("nobody"), 2, &HashSet::new());
        assert_eq!(
            cold.iter().map(|s| s.movie_id.get()).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn serve_time_history_matches_training_history() {
        let m = ItemKnnModel::fit(&data(), &plain()).unwrap();
        let from_history = m.recommend_from_history(
            &[
                (movie(2), InteractionKind::View),
                (movie(1), InteractionKind::View),
                (movie(77), InteractionKind::Like),
            ],
            5,
            &HashSet::new(),
        );
        assert_eq!(from_history, m.recommend(&user("b"), 5, &HashSet::new()));
    }

    #[test]
    fn bincode_round_trip_and_corrupt_structure_is_refused() {
        let m = ItemKnnModel::fit(&data(), &plain()).unwrap();
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&m, cfg).unwrap();
        let (back, _): (ItemKnnModel, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, m);

        let mut broken = m.clone();
        broken.neighbours.idx[0] = 99;
        let bytes = bincode::serde::encode_to_vec(&broken, cfg).unwrap();
        assert!(bincode::serde::decode_from_slice::<ItemKnnModel, _>(&bytes, cfg).is_err());
        let mut broken = m.clone();
        broken.users.reverse();
        let bytes = bincode::serde::encode_to_vec(&broken, cfg).unwrap();
        assert!(bincode::serde::decode_from_slice::<ItemKnnModel, _>(&bytes, cfg).is_err());
    }

    #[test]
    fn rejects_zero_neighbours() {
        let params = ItemKnnParams {
            neighbours: 0,
            ..ItemKnnParams::default()
        };
        assert!(ItemKnnModel::fit(&data(), &params).is_err());
    }
}
