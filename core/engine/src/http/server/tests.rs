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

#[tokio::test(start_paused = true)]
async fn the_idle_watchdog_fires_for_the_waker_that_polls_it_last() {
    // Polled first with a waker that wakes nothing, then awaited by this task: the timer must
    // take this task's waker, or the watchdog would never fire.
    let activity = Activity::default();
    let timeout = Duration::from_millis(400);
    let mut idle = Box::pin(activity.idle(timeout));
    let mut noop = Context::from_waker(std::task::Waker::noop());
    assert!(idle.as_mut().poll(&mut noop).is_pending());
    let start = tokio::time::Instant::now();
    let fired = tokio::time::timeout(Duration::from_secs(5), idle).await;
    assert!(fired.is_ok(), "the watchdog kept the other waker");
    assert!(start.elapsed() <= timeout + timeout / 4, "{:?}", start.elapsed());
}

#[test]
fn classify_counts_only_the_clients_faults() {
    assert_eq!(classify(&std::io::Error::other("reset")), None);
}

#[tokio::test]
async fn sniffing_tells_the_http2_preface_from_http1_and_gives_the_bytes_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // HTTP/1: decided at the first byte that differs; everything read comes back first.
    let (mut client, mut server) = tokio::io::duplex(1024);
    client.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let (h2, first) = sniff(&mut server).await.unwrap().unwrap();
    assert!(!h2);
    client.write_all(b"next").await.unwrap();
    drop(client);
    let mut all = Vec::new();
    let mut io = Tracked { inner: server, activity: Arc::default(), first: first.freeze() };
    io.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"GET / HTTP/1.1\r\nhost: a\r\n\r\nnext");

    // The preface in two pieces: not decided until all 24 bytes are in.
    let (mut client, mut server) = tokio::io::duplex(1024);
    let sniffing = tokio::spawn(async move { sniff(&mut server).await.unwrap() });
    client.write_all(&H2_PREFACE[..10]).await.unwrap();
    tokio::task::yield_now().await;
    client.write_all(&H2_PREFACE[10..]).await.unwrap();
    let (h2, first) = sniffing.await.unwrap().unwrap();
    assert!(h2);
    assert_eq!(&first[..], &H2_PREFACE[..]);

    // Closed before a whole preface: nothing to serve.
    let (mut client, mut server) = tokio::io::duplex(1024);
    client.write_all(b"PRI * HTTP").await.unwrap();
    drop(client);
    assert!(sniff(&mut server).await.unwrap().is_none());
}
