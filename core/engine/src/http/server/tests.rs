use super::*;

#[tokio::test(start_paused = true)]
async fn idle_waits_out_activity_and_in_flight_requests() {
    let activity = Arc::new(Activity::default());
    let timeout = Duration::from_millis(400);
    let start = tokio::time::Instant::now();
    activity.idle(timeout).await;
    let quiet = start.elapsed();
    assert!(quiet >= timeout && quiet <= timeout + timeout / 4, "{quiet:?}");

    // Bytes every 100 ms for a second keep it busy; then it goes idle.
    let a = Arc::clone(&activity);
    tokio::spawn(async move {
        for _ in 0..10 {
            a.touched.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let start = tokio::time::Instant::now();
    activity.idle(timeout).await;
    assert!(start.elapsed() >= Duration::from_millis(1000) + timeout - timeout / 4, "{:?}", start.elapsed());

    // A request in flight is not idle, however long it takes.
    activity.in_flight.fetch_add(1, Ordering::Relaxed);
    let idle = tokio::time::timeout(Duration::from_secs(5), activity.idle(timeout)).await;
    assert!(idle.is_err(), "idle with a request in flight");
}

#[test]
fn classify_counts_only_the_clients_faults() {
    assert_eq!(classify(&std::io::Error::other("reset")), None);
}
