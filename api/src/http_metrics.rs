//! Request count and latency per route template, method and status.
//!
//! Per route template, not per raw path, which would explode the label set
//! with user ids; non-standard methods are counted as `other` for the same
//! reason (a client may send any token as a method).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// The metrics of one route, method and status.
#[derive(Clone)]
struct Handles {
    method: &'static str,
    status: u16,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Handles by route, registered once: looking a metric up by its labels on
/// every request cost a seventh of the recommendations route's throughput
/// (allocations and hashing of the label set). Read without a lock or a
/// reference count, since every request on both workers reads it; replaced
/// whole when a new combination first appears, which stops after warm-up.
static HANDLES: LazyLock<ArcSwap<HashMap<String, Vec<Handles>>>> = LazyLock::new(Default::default);

/// Middleware: time the request and count it under its route template.
pub async fn record(request: Request, next: Next) -> Response {
    // MatchedPath is an Arc<str>: cloning it does not copy the route.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    let registered = HANDLES.load();
    match find(&registered, route, method, status) {
        Some(handles) => handles.observe(seconds),
        None => {
            drop(registered);
            register(route, method, status).observe(seconds);
        }
    }
    response
}

impl Handles {
    fn observe(&self, seconds: f64) {
        self.requests.increment(1);
        self.duration.record(seconds);
    }
}

fn find<'a>(
    registered: &'a HashMap<String, Vec<Handles>>,
    route: &str,
    method: &str,
    status: u16,
) -> Option<&'a Handles> {
    find_in(registered.get(route)?, method, status)
}

/// Register the metrics of a combination not seen before.
fn register(route: &str, method: &'static str, status: u16) -> Handles {
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ];
    let handles = Handles {
        method,
        status,
        requests: metrics::counter!("marquee_http_requests_total", &labels),
        duration: metrics::histogram!("marquee_http_request_duration_seconds", &labels),
    };
    HANDLES.rcu(|registered| {
        let mut registered = HashMap::clone(registered);
        let combinations = registered.entry(route.to_owned()).or_default();
        if find_in(combinations, method, status).is_none() {
            combinations.push(handles.clone());
        }
        Arc::new(registered)
    });
    handles
}

fn find_in<'a>(combinations: &'a [Handles], method: &str, status: u16) -> Option<&'a Handles> {
    combinations
        .iter()
        .find(|h| h.status == status && h.method == method)
}

/// The method as labelled: one of HTTP's standard methods, or `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_labelled_by_name_and_others_lumped() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let invented = Method::from_bytes(b"X-RANDOM-1234").unwrap();
        assert_eq!(method_label(&invented), "other");
    }
}
