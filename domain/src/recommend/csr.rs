//! The one sparse-matrix type of the recommenders: compressed sparse rows.
//!
//! Item-kNN stores its neighbour lists and user histories in it (and writes
//! it into model files, so the field names are part of the format); ALS
//! builds its user×item confidences and their transpose with it.

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Compressed sparse rows: row `r` is `idx[ptr[r]..ptr[r+1]]` with matching `val`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct Csr {
    pub(crate) ptr: Vec<usize>,
    pub(crate) idx: Vec<u32>,
    pub(crate) val: Vec<f32>,
}

impl Csr {
    pub(crate) fn row(&self, r: usize) -> (&[u32], &[f32]) {
        match (self.ptr.get(r), self.ptr.get(r + 1)) {
            (Some(&a), Some(&b)) => match (self.idx.get(a..b), self.val.get(a..b)) {
                (Some(idx), Some(val)) => (idx, val),
                _ => (&[], &[]),
            },
            _ => (&[], &[]),
        }
    }

    /// Structural invariants for `n_rows` rows over `n_cols` columns, so a corrupt
    /// artefact is refused at load time instead of silently ranking garbage.
    pub(crate) fn check(
        &self,
        what: &str,
        n_rows: usize,
        n_cols: usize,
    ) -> Result<(), ValidationError> {
        let bad = |why: &str| Err(ValidationError::new(what, why));
        if self.ptr.len() != n_rows + 1 || self.ptr.first() != Some(&0) {
            return bad("row pointer length does not match the row count");
        }
        if self.ptr.last() != Some(&self.idx.len()) || self.idx.len() != self.val.len() {
            return bad("row pointers do not cover the entries");
        }
        if self.ptr.windows(2).any(|w| w[0] > w[1]) {
            return bad("row pointers decrease");
        }
        if self.idx.iter().any(|&c| c as usize >= n_cols) {
            return bad("column index out of range");
        }
        if self.val.iter().any(|v| !v.is_finite()) {
            return bad("non-finite value");
        }
        Ok(())
    }

    pub(crate) fn n_rows(&self) -> usize {
        self.ptr.len().saturating_sub(1)
    }

    /// Transpose into `n_cols` rows, keeping values; rows come out sorted by index.
    pub(crate) fn transpose(&self, n_cols: usize) -> Csr {
        let mut counts = vec![0usize; n_cols + 1];
        for &c in &self.idx {
            counts[c as usize + 1] += 1;
        }
        for i in 0..n_cols {
            counts[i + 1] += counts[i];
        }
        let mut next = counts.clone();
        let mut idx = vec![0u32; self.idx.len()];
        let mut val = vec![0f32; self.idx.len()];
        for r in 0..self.n_rows() {
            let (cols, vals) = self.row(r);
            for (&c, &v) in cols.iter().zip(vals) {
                let slot = &mut next[c as usize];
                idx[*slot] = r as u32;
                val[*slot] = v;
                *slot += 1;
            }
        }
        Csr {
            ptr: counts,
            idx,
            val,
        }
    }
}
