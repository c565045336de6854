//! Users' contexts (sticky arm, seen movies) that missed the per-user cache,
//! read from PostgreSQL in batches.
//!
//! A context read is one short statement, and PostgreSQL's and sqlx's cost per
//! statement is most of it: with every request of a user the cache does not
//! hold reading alone, the route did about a tenth of its cached rate. Here a
//! few readers take the queued reads: one takes the first that arrives and
//! every other queued by then, up to [`MAX_BATCH`], and answers them with one
//! statement. Nothing waits for a batch to fill: at low load each read goes
//! alone and at once; under load, reads queue while the readers are busy and
//! go together.

use std::sync::Arc;

use domain::ids::{ExperimentKey, UserId};
use repositories::postgres::serving::{PgServing, UserContext};
use repositories::RepoError;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::sync::CancellationToken;

/// Most users answered by one statement.
pub const MAX_BATCH: usize = 128;

/// Why a queued read has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ContextReadError {
    #[error(transparent)]
    Store(Arc<RepoError>),
    #[error("the context readers have stopped")]
    Stopped,
}

/// One user's queued read and where its answer goes.
pub struct ContextRead {
    pub experiment: Option<ExperimentKey>,
    pub user: UserId,
    pub reply: oneshot::Sender<Result<UserContext, ContextReadError>>,
}

/// Counters of the batched reads: users read against statements sent.
#[derive(Clone)]
pub struct ContextReadMetrics {
    users: metrics::Counter,
    statements: metrics::Counter,
}

impl ContextReadMetrics {
    pub fn register() -> Self {
        Self {
            users: metrics::counter!("marquee_user_context_reads_total"),
            statements: metrics::counter!("marquee_user_context_statements_total"),
        }
    }
}

/// Answer queued reads until `shutdown`; several readers share one queue.
pub async fn reader(
    pg: PgServing,
    queue: Arc<Mutex<mpsc::Receiver<ContextRead>>>,
    metrics: ContextReadMetrics,
    shutdown: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            batch = next_batch(&queue) => batch,
        };
        let Some(batch) = batch else { return };
        answer(&pg, batch, &metrics).await;
    }
}

/// The first queued read (waiting for it) and every other already queued, up
/// to [`MAX_BATCH`]; `None` once the queue is closed.
async fn next_batch(queue: &Mutex<mpsc::Receiver<ContextRead>>) -> Option<Vec<ContextRead>> {
    let mut queue = queue.lock().await;
    let first = queue.recv().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(read) => batch.push(read),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// One statement per experiment in the batch (nearly always one), each
/// answer sent to its own caller.
async fn answer(pg: &PgServing, mut batch: Vec<ContextRead>, metrics: &ContextReadMetrics) {
    // A caller that gave up (its time limit passed) needs no answer.
    batch.retain(|read| !read.reply.is_closed());
    while let Some(experiment) = batch.first().map(|read| read.experiment.clone()) {
        let (same, rest): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|read| read.experiment == experiment);
        batch = rest;
        let users: Vec<UserId> = same.iter().map(|read| read.user.clone()).collect();
        metrics.statements.increment(1);
        metrics.users.increment(users.len() as u64);
        match pg.user_contexts(experiment.as_ref(), &users).await {
            Ok(contexts) => {
                for (read, context) in same.into_iter().zip(contexts) {
                    // The caller may have stopped waiting meanwhile.
                    let _ = read.reply.send(Ok(context));
                }
            }
            Err(e) => {
                let e = ContextReadError::Store(Arc::new(e));
                for read in same {
                    let _ = read.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
