//! Which served list an event belongs to: an in-process cache of recent served
//! lists in front of the shared store (Redis), which outlives this process and
//! is shared by every worker of the group.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use domain::events::EventKind;
use domain::ids::RequestId;
use domain::ports::pipeline::{
    AssignmentLookup, AttributionRefusal, AttributionStore, ClickCredit, ClickCredits, ServedList,
    StoreError, StoredEvent,
};

/// A bounded map with two generations: lookups hit either, inserts go to the
/// current one, and when it is full the older generation is dropped whole.
/// An approximate LRU at O(1) per operation, with no per-entry bookkeeping.
pub struct RecentLists {
    capacity: usize,
    current: HashMap<RequestId, Arc<ServedList>>,
    previous: HashMap<RequestId, Arc<ServedList>>,
}

impl RecentLists {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(2),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    pub fn get(&mut self, id: &RequestId) -> Option<Arc<ServedList>> {
        if let Some(list) = self.current.get(id) {
            return Some(list.clone());
        }
        let list = self.previous.remove(id)?;
        self.insert(*id, list.clone());
        Some(list)
    }

    pub fn insert(&mut self, id: RequestId, list: Arc<ServedList>) {
        if self.current.len() >= self.capacity / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(id, list);
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts of one attribution pass, recorded as metrics once the batch is durable.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AttributionCounts {
    pub attributed: u64,
    /// Unattributed for any reason, those refused below included.
    pub unattributed: u64,
    pub sticky: u64,
    /// Named a list served to another user.
    pub other_user: u64,
    /// A click on a movie its list did not contain.
    pub movie_not_served: u64,
    /// A click beyond the cap per (served list, movie).
    pub click_cap: u64,
}

impl AttributionCounts {
    /// Fold in the counts of another pass (another part of the same batch).
    pub fn add(&mut self, other: AttributionCounts) {
        self.attributed += other.attributed;
        self.unattributed += other.unattributed;
        self.sticky += other.sticky;
        self.other_user += other.other_user;
        self.movie_not_served += other.movie_not_served;
        self.click_cap += other.click_cap;
    }

    fn refused(&mut self, refusal: AttributionRefusal) {
        match refusal {
            AttributionRefusal::OtherUser => self.other_user += 1,
            AttributionRefusal::MovieNotServed => self.movie_not_served += 1,
            AttributionRefusal::ClickCap => self.click_cap += 1,
        }
    }
}

/// How many clicks one served list may earn per movie, and where the
/// credited ones are kept.
pub struct ClickCap {
    pub credits: Arc<dyn ClickCredits>,
    /// Clicks credited per (served list, movie); 0 credits every click.
    pub per_served_movie: u32,
}

/// Attribution for the pipeline: remembers impressions, attributes the rest.
pub struct Attributor {
    recent: RecentLists,
    store: Arc<dyn AttributionStore>,
    assignments: Arc<dyn AssignmentLookup>,
    click_cap: ClickCap,
    ttl_s: u64,
}

impl Attributor {
    pub fn new(
        capacity: usize,
        store: Arc<dyn AttributionStore>,
        assignments: Arc<dyn AssignmentLookup>,
        click_cap: ClickCap,
        ttl_s: u64,
    ) -> Self {
        Self {
            recent: RecentLists::new(capacity),
            store,
            assignments,
            click_cap,
            ttl_s,
        }
    }

    /// Remember the served list of every impression in `events` (duplicates
    /// included: a replayed impression must still be attributable, and the
    /// write is idempotent). Process memory always keeps them; the shared
    /// store is for other workers (after a rebalance), so when it is down the
    /// batch goes on and only a click handled elsewhere loses its attribution.
    pub async fn remember(&mut self, events: &[StoredEvent]) -> Result<(), StoreError> {
        let mut lists = Vec::new();
        for e in events {
            if let (Some(imp), Some(request_id)) = (&e.event.impression, e.event.request_id) {
                let list = ServedList {
                    user: Some(e.event.user_id.clone()),
                    ..ServedList::from(imp)
                };
                self.recent.insert(request_id, Arc::new(list.clone()));
                lists.push((request_id, list));
            }
        }
        if lists.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.put(&lists, self.ttl_s).await {
            metrics::counter!("marquee_worker_attribution_store_errors_total", "op" => "put")
                .increment(1);
            tracing::warn!(error = %e, lists = lists.len(), "could not share served lists; they stay in this worker's memory");
        }
        Ok(())
    }

    /// The request ids that clicks, views, likes and conversions in `events`
    /// name and whose served list is in neither `events`, process memory nor
    /// the store: their impressions may still be on their way. Lists the
    /// store has are kept in memory for [`Self::attribute`]. A store error
    /// answers none: storing the batch asks the store again, with retries.
    pub async fn unknown_request_ids(&mut self, events: &[StoredEvent]) -> HashSet<RequestId> {
        let served: HashSet<RequestId> = events
            .iter()
            .filter_map(|e| e.event.served_request())
            .collect();
        let named = events
            .iter()
            .filter_map(|e| e.event.acted_on_request())
            .filter(|id| !served.contains(id));
        match self.load_missing(named).await {
            Ok(unknown) => unknown,
            Err(e) => {
                tracing::warn!(error = %e, "could not look up served lists; not waiting for impressions");
                HashSet::new()
            }
        }
    }

    /// Of `ids`, bring the served lists process memory lacks in from the
    /// store; returns the ids the store has no list for either.
    async fn load_missing(
        &mut self,
        ids: impl IntoIterator<Item = RequestId>,
    ) -> Result<HashSet<RequestId>, StoreError> {
        let mut asked = HashSet::new();
        let missing: Vec<RequestId> = ids
            .into_iter()
            .filter(|id| self.recent.get(id).is_none() && asked.insert(*id))
            .collect();
        let mut unknown = HashSet::new();
        if missing.is_empty() {
            return Ok(unknown);
        }
        let found = self.store.get_many(&missing).await?;
        for (id, list) in missing.into_iter().zip(found) {
            match list {
                Some(list) => self.recent.insert(id, Arc::new(list)),
                None => {
                    unknown.insert(id);
                }
            }
        }
        Ok(unknown)
    }

    /// Whether process memory holds the served list of `id`.
    pub fn knows(&mut self, id: &RequestId) -> bool {
        self.recent.get(id).is_some()
    }

    /// Fill in the attributions of the non-impression events: from the served
    /// list of their request id, or for a conversion without one, from the
    /// user's sticky arms. Events whose request id is unknown or expired stay
    /// unattributed (and are counted), never dropped.
    pub async fn attribute(
        &mut self,
        events: &mut [StoredEvent],
    ) -> Result<AttributionCounts, StoreError> {
        let mut counts = AttributionCounts::default();
        // Without the shared store, lists in process memory still attribute;
        // the rest are stored unattributed (and counted), not held back.
        if let Err(e) = self
            .load_missing(events.iter().filter_map(|e| e.event.acted_on_request()))
            .await
        {
            metrics::counter!("marquee_worker_attribution_store_errors_total", "op" => "get")
                .increment(1);
            tracing::warn!(error = %e, "could not look up served lists; attributing from memory only");
        }
        let mut sticky_users = Vec::new();
        // Clicks the list admits, credited only once the cap has been asked.
        let mut capped: Vec<(usize, Arc<ServedList>, ClickCredit)> = Vec::new();
        for (index, e) in events.iter_mut().enumerate() {
            if e.event.kind == EventKind::Impression {
                continue;
            }
            e.attributions.clear();
            match e.event.request_id {
                Some(id) => match self.recent.get(&id) {
                    Some(list) => {
                        match list.admits(e.event.kind, &e.event.user_id, e.event.movie_id) {
                            Ok(()) => match e.event.movie_id {
                                Some(movie_id)
                                    if e.event.kind == EventKind::Click
                                        && self.click_cap.per_served_movie > 0 =>
                                {
                                    let credit = ClickCredit {
                                        request_id: id,
                                        movie_id,
                                        event_id: e.event.id,
                                    };
                                    capped.push((index, list, credit));
                                }
                                _ => {
                                    e.attributions.push(list.attribute(e.event.movie_id));
                                    e.model_version = list.model_version.clone();
                                    counts.attributed += 1;
                                }
                            },
                            Err(refusal) => {
                                counts.unattributed += 1;
                                counts.refused(refusal);
                                tracing::debug!(
                                    event_id = %e.event.id,
                                    request_id = %id,
                                    reason = refusal.as_str(),
                                    "not credited to the served list"
                                );
                            }
                        }
                    }
                    None => counts.unattributed += 1,
                },
                None if e.event.kind == EventKind::Conversion => {
                    sticky_users.push(e.event.user_id.clone());
                }
                None => {}
            }
        }
        if !capped.is_empty() {
            let credits: Vec<ClickCredit> = capped.iter().map(|(_, _, c)| *c).collect();
            let admitted = self
                .click_cap
                .credits
                .admit(&credits, self.click_cap.per_served_movie)
                .await?;
            for ((index, list, credit), admitted) in capped.into_iter().zip(admitted) {
                let e = &mut events[index];
                if admitted {
                    e.attributions.push(list.attribute(e.event.movie_id));
                    e.model_version = list.model_version.clone();
                    counts.attributed += 1;
                } else {
                    counts.unattributed += 1;
                    counts.refused(AttributionRefusal::ClickCap);
                    tracing::debug!(
                        event_id = %credit.event_id,
                        request_id = %credit.request_id,
                        movie_id = credit.movie_id.get(),
                        "click over the cap per served movie; not credited"
                    );
                }
            }
        }
        if !sticky_users.is_empty() {
            sticky_users.sort();
            sticky_users.dedup();
            let arms = self.assignments.sticky_arms(&sticky_users).await?;
            for e in events
                .iter_mut()
                .filter(|e| e.event.kind == EventKind::Conversion && e.event.request_id.is_none())
            {
                for arm in arms.iter().filter(|a| a.user_id == e.event.user_id) {
                    e.attributions.push(arm.attribution.clone());
                }
                if !e.attributions.is_empty() {
                    counts.sticky += 1;
                }
            }
        }
        Ok(counts)
    }

    pub fn cached(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::events::{Event, ImpressionDetails};
    use domain::ids::{AlgorithmKey, ArmKey, EventId, ExperimentKey, UserId};
    use domain::ports::pipeline::StickyArm;
    use std::sync::Mutex;

    /// Served lists in memory, counting lookups.
    #[derive(Default)]
    struct MemoryLists {
        lists: Mutex<HashMap<RequestId, ServedList>>,
        lookups: Mutex<usize>,
    }

    #[async_trait::async_trait]
    impl AttributionStore for MemoryLists {
        async fn put(
            &self,
            lists: &[(RequestId, ServedList)],
            _ttl_s: u64,
        ) -> Result<(), StoreError> {
            let mut stored = self.lists.lock().unwrap();
            for (id, list) in lists {
                stored.insert(*id, list.clone());
            }
            Ok(())
        }

        async fn get_many(&self, ids: &[RequestId]) -> Result<Vec<Option<ServedList>>, StoreError> {
            *self.lookups.lock().unwrap() += 1;
            let stored = self.lists.lock().unwrap();
            Ok(ids.iter().map(|id| stored.get(id).cloned()).collect())
        }
    }

    struct NoAssignments;

    #[async_trait::async_trait]
    impl AssignmentLookup for NoAssignments {
        async fn sticky_arms(&self, _users: &[UserId]) -> Result<Vec<StickyArm>, StoreError> {
            Ok(Vec::new())
        }
    }

    /// Credited clicks in memory, in order of arrival per (request, movie).
    #[derive(Default)]
    struct MemoryCredits {
        credited: Mutex<HashMap<(RequestId, i64), Vec<EventId>>>,
    }

    #[async_trait::async_trait]
    impl ClickCredits for MemoryCredits {
        async fn admit(&self, clicks: &[ClickCredit], cap: u32) -> Result<Vec<bool>, StoreError> {
            let mut credited = self.credited.lock().unwrap();
            Ok(clicks
                .iter()
                .map(|c| {
                    let ids = credited
                        .entry((c.request_id, c.movie_id.get()))
                        .or_default();
                    if !ids.contains(&c.event_id) {
                        ids.push(c.event_id);
                    }
                    ids.iter().position(|id| *id == c.event_id).unwrap() < cap as usize
                })
                .collect())
        }
    }

    fn attributor_over(store: Arc<MemoryLists>) -> Attributor {
        let click_cap = ClickCap {
            credits: Arc::new(MemoryCredits::default()),
            per_served_movie: 1,
        };
        Attributor::new(100, store, Arc::new(NoAssignments), click_cap, 60)
    }

    fn event(kind: EventKind, request_id: RequestId) -> StoredEvent {
        let impression = (kind == EventKind::Impression).then(|| ImpressionDetails {
            experiment: ExperimentKey::parse("home").unwrap(),
            arm: ArmKey::parse("control").unwrap(),
            algorithm: AlgorithmKey::parse("als").unwrap(),
            model_version: None,
            items: Vec::new(),
        });
        StoredEvent::new(Event {
            id: EventId::new_random(),
            kind,
            user_id: UserId::parse("u1").unwrap(),
            movie_id: None,
            request_id: Some(request_id),
            ts: chrono::Utc::now(),
            value: None,
            impression,
        })
    }

    #[tokio::test]
    async fn a_click_on_an_unknown_request_names_it_once() {
        let store = Arc::new(MemoryLists::default());
        let mut attributor = attributor_over(store.clone());
        let clicked = RequestId::new_random();
        let unknown = attributor
            .unknown_request_ids(&[
                event(EventKind::Click, clicked),
                event(EventKind::Like, clicked),
            ])
            .await;
        assert_eq!(unknown, HashSet::from([clicked]));
        assert_eq!(*store.lookups.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_request_served_in_the_batch_remembered_or_stored_is_known() {
        let store = Arc::new(MemoryLists::default());
        let mut attributor = attributor_over(store.clone());
        let in_batch = RequestId::new_random();
        let batch = [
            event(EventKind::Click, in_batch),
            event(EventKind::Impression, in_batch),
        ];
        assert!(attributor.unknown_request_ids(&batch).await.is_empty());
        assert_eq!(*store.lookups.lock().unwrap(), 0, "no store lookup needed");

        let remembered = RequestId::new_random();
        attributor
            .remember(&[event(EventKind::Impression, remembered)])
            .await
            .unwrap();
        assert!(attributor
            .unknown_request_ids(&[event(EventKind::Click, remembered)])
            .await
            .is_empty());
        assert_eq!(*store.lookups.lock().unwrap(), 0);

        // Served and stored by another worker: found in the store, then kept in memory.
        let elsewhere = RequestId::new_random();
        attributor_over(store.clone())
            .remember(&[event(EventKind::Impression, elsewhere)])
            .await
            .unwrap();
        assert!(attributor
            .unknown_request_ids(&[event(EventKind::View, elsewhere)])
            .await
            .is_empty());
        assert!(attributor
            .unknown_request_ids(&[event(EventKind::Like, elsewhere)])
            .await
            .is_empty());
        assert_eq!(
            *store.lookups.lock().unwrap(),
            1,
            "the second lookup hits memory"
        );
    }

    #[tokio::test]
    async fn forged_clicks_naming_another_users_request_are_not_credited() {
        let store = Arc::new(MemoryLists::default());
        let mut attributor = attributor_over(store.clone());
        let served = RequestId::new_random();
        let mut impression = event(EventKind::Impression, served);
        if let Some(imp) = impression.event.impression.as_mut() {
            imp.items = vec![domain::events::ServedItem {
                movie_id: domain::ids::MovieId::parse(7).unwrap(),
                position: 0,
            }];
        }
        attributor.remember(&[impression]).await.unwrap();

        let click = |user: &str, movie: i64| {
            let mut e = event(EventKind::Click, served);
            e.event.user_id = UserId::parse(user).unwrap();
            e.event.movie_id = Some(domain::ids::MovieId::parse(movie).unwrap());
            e
        };
        let mut batch: Vec<StoredEvent> = (0..50).map(|_| click("mallory", 99)).collect();
        batch.push(click("u1", 99));
        batch.push(click("u1", 7));
        let counts = attributor.attribute(&mut batch).await.unwrap();
        assert_eq!(counts.attributed, 1, "{counts:?}");
        assert_eq!(counts.unattributed, 51);
        assert_eq!((counts.other_user, counts.movie_not_served), (50, 1));
        assert!(batch[..51].iter().all(|e| e.attributions.is_empty()));
        assert_eq!(batch[51].attributions[0].position, Some(0));
        // The list shared with other workers names its user too.
        let shared = store.lists.lock().unwrap().get(&served).cloned().unwrap();
        assert_eq!(shared.user.unwrap().as_str(), "u1");
    }

    #[tokio::test]
    async fn a_served_movie_earns_one_click_however_often_it_is_clicked() {
        let store = Arc::new(MemoryLists::default());
        let mut attributor = attributor_over(store);
        let served = RequestId::new_random();
        let mut impression = event(EventKind::Impression, served);
        if let Some(imp) = impression.event.impression.as_mut() {
            imp.items = (0..2)
                .map(|p| domain::events::ServedItem {
                    movie_id: domain::ids::MovieId::parse(7 + i64::from(p)).unwrap(),
                    position: p,
                })
                .collect();
        }
        attributor.remember(&[impression]).await.unwrap();
        let click = |movie: i64| {
            let mut e = event(EventKind::Click, served);
            e.event.movie_id = Some(domain::ids::MovieId::parse(movie).unwrap());
            e
        };
        let mut batch: Vec<StoredEvent> = (0..5).map(|_| click(7)).collect();
        batch.push(click(8));
        let counts = attributor.attribute(&mut batch).await.unwrap();
        assert_eq!((counts.attributed, counts.click_cap), (2, 4), "{counts:?}");
        assert_eq!(counts.unattributed, 4);
        assert!(!batch[0].attributions.is_empty() && !batch[5].attributions.is_empty());
        assert!(batch[1..5].iter().all(|e| e.attributions.is_empty()));

        // A retried batch gets the same answers: the credited click stays credited.
        let counts = attributor.attribute(&mut batch).await.unwrap();
        assert_eq!((counts.attributed, counts.click_cap), (2, 4), "{counts:?}");
        // A view of the same movie is not a click: never capped.
        let mut view = event(EventKind::View, served);
        view.event.movie_id = Some(domain::ids::MovieId::parse(7).unwrap());
        let counts = attributor.attribute(&mut [view]).await.unwrap();
        assert_eq!((counts.attributed, counts.click_cap), (1, 0));
    }

    fn list(arm: &str) -> Arc<ServedList> {
        Arc::new(ServedList {
            experiment: ExperimentKey::parse("home").unwrap(),
            arm: ArmKey::parse(arm).unwrap(),
            algorithm: AlgorithmKey::parse("als").unwrap(),
            model_version: None,
            items: Vec::new(),
            user: None,
        })
    }

    #[test]
    fn recent_lists_keep_at_most_capacity_and_promote_on_hit() {
        let mut cache = RecentLists::new(4);
        let ids: Vec<RequestId> = (0..10).map(|_| RequestId::new_random()).collect();
        cache.insert(ids[0], list("a"));
        cache.insert(ids[1], list("b"));
        // Generation turns over: 0 and 1 move to the previous generation.
        cache.insert(ids[2], list("c"));
        assert_eq!(cache.get(&ids[0]).unwrap().arm.as_str(), "a");
        for id in &ids[3..] {
            cache.insert(*id, list("x"));
            assert!(cache.len() <= 4);
        }
        assert!(cache.get(&ids[1]).is_none());
        assert!(cache.get(&ids[9]).is_some());
    }
}
