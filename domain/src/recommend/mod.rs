//! Recommendation algorithms and their offline evaluation.
//!
//! Every algorithm fits on a [`Dataset`] of implicit interactions and yields a
//! model implementing [`Recommender`]. Models are plain data (serde) so the
//! worker can ship them through S3 in the versioned format of [`format`].

pub mod als;
pub mod cold_start;
mod csr;
pub mod evaluation;
pub mod format;
pub mod item_knn;
pub mod movielens;
pub mod popularity;
pub mod similar;
pub mod synthetic;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ids::{MovieId, UserId};

/// How strongly an interaction signals taste; likes weigh more than views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InteractionKind {
    View,
    Like,
}

/// One user-movie interaction with its time (seconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub user: u32,
    pub item: u32,
    pub kind: InteractionKind,
    pub ts: i64,
}

/// A movie's catalog facts that cold-start and the synthetic data need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub movie_id: MovieId,
    pub title: String,
    pub year: Option<i32>,
    pub genres: Vec<String>,
}

/// Interactions with users and items mapped to dense indices, as algorithms want them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Dataset {
    pub users: Vec<UserId>,
    pub items: Vec<MovieId>,
    pub interactions: Vec<Interaction>,
    #[serde(skip)]
    user_index: HashMap<UserId, u32>,
    #[serde(skip)]
    item_index: HashMap<MovieId, u32>,
}

impl Dataset {
    pub fn new() -> Self {
        Self::default()
    }

    /// Dense index of a user, allocating one on first sight.
    pub fn user_idx(&mut self, user: &UserId) -> u32 {
        if let Some(&i) = self.user_index.get(user) {
            return i;
        }
        let i = self.users.len() as u32;
        self.users.push(user.clone());
        self.user_index.insert(user.clone(), i);
        i
    }

    /// Dense index of a movie, allocating one on first sight.
    pub fn item_idx(&mut self, item: MovieId) -> u32 {
        if let Some(&i) = self.item_index.get(&item) {
            return i;
        }
        let i = self.items.len() as u32;
        self.items.push(item);
        self.item_index.insert(item, i);
        i
    }

    pub fn push(&mut self, user: &UserId, item: MovieId, kind: InteractionKind, ts: i64) {
        let user = self.user_idx(user);
        let item = self.item_idx(item);
        self.interactions.push(Interaction {
            user,
            item,
            kind,
            ts,
        });
    }

    pub fn find_user(&self, user: &UserId) -> Option<u32> {
        self.user_index.get(user).copied()
    }

    pub fn find_item(&self, item: MovieId) -> Option<u32> {
        self.item_index.get(&item).copied()
    }

    /// Rebuild the lookup maps (after deserialising).
    pub fn reindex(&mut self) {
        self.user_index = self
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.clone(), i as u32))
            .collect();
        self.item_index = self
            .items
            .iter()
            .enumerate()
            .map(|(i, m)| (*m, i as u32))
            .collect();
    }

    pub fn n_users(&self) -> usize {
        self.users.len()
    }

    pub fn n_items(&self) -> usize {
        self.items.len()
    }
}

/// A recommended movie with the model's score (higher is better).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoredItem {
    pub movie_id: MovieId,
    pub score: f32,
}

/// A fitted model that ranks movies for a user.
pub trait Recommender {
    /// Top `k` movies for `user`, best first, never one in `exclude`.
    /// Unknown users get the model's non-personal fallback (possibly empty).
    fn recommend(&self, user: &UserId, k: usize, exclude: &HashSet<MovieId>) -> Vec<ScoredItem>;
}

/// Best `k` candidates, best first; ties go to the lower index so rankings are reproducible.
///
/// NaN scores are dropped rather than ranked, since no order for them means anything.
pub(crate) fn top_k(mut candidates: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    candidates.retain(|(_, s)| !s.is_nan());
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k == 0 {
        return Vec::new();
    }
    if candidates.len() > k {
        candidates.select_nth_unstable_by(k - 1, better);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(better);
    candidates
}

/// A user's precomputed list as the worker stores it under `recs:{algorithm}:{user}`
/// and the api reads it: best first, with the model version that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrecomputedList {
    pub model_version: String,
    pub items: Vec<ScoredItem>,
}
