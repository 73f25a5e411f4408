//! The refresher's timing, with tokio's clock paused so hours pass in microseconds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::time::{Instant, advance};

use super::*;

/// A token source that answers from a script and counts calls; after the script it fails.
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<VecDeque<Result<u64, &'static str>>>>,
    calls: Arc<AtomicU32>,
    delay: Duration,
}

impl Script {
    fn new(answers: &[Result<u64, &'static str>]) -> Script {
        Script { answers: Arc::new(Mutex::new(answers.iter().cloned().collect())), ..Script::default() }
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenSource for Script {
    fn fetch(&self) -> impl Future<Output = Result<Grant, FetchError>> + Send {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = self.answers.lock().unwrap().pop_front().unwrap_or(Err("script ended"));
        let delay = self.delay;
        async move {
            tokio::time::sleep(delay).await;
            match answer {
                Ok(secs) => Ok(Grant {
                    access_token: SecretString::from(format!("tok-{n}")),
                    lifetime: Duration::from_secs(secs),
                }),
                Err(_) => Err(FetchError::Status { status: 503 }),
            }
        }
    }
}

fn header(t: &Token) -> &str {
    t.header().to_str().unwrap()
}

/// Lets the refresher task run whatever is ready at the current paused instant.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_three_quarters_of_the_lifetime() {
    let script = Script::new(&[Ok(3600), Ok(3600)]);
    let (tokens, _task) = Tokens::start(script.clone(), Duration::from_secs(10));
    let first = tokens.wait_usable(Duration::from_secs(1)).await.unwrap();
    assert_eq!(header(&first), "Bearer tok-1");
    advance(Duration::from_secs(2699)).await;
    settle().await;
    assert_eq!(script.calls(), 1);
    advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(script.calls(), 2);
    assert_eq!(header(&tokens.usable().unwrap()), "Bearer tok-2");
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_keep_the_old_token_and_never_stop_the_refresher() {
    let script = Script::new(&[Ok(100), Err("down"), Err("down"), Err("down"), Err("down"), Ok(100)]);
    let (tokens, task) = Tokens::start(script.clone(), Duration::from_secs(10));
    tokens.wait_usable(Duration::from_secs(1)).await.unwrap();
    // Refresh due at 75 s; the token stays usable until 90 s (100 s less a tenth).
    advance(Duration::from_secs(76)).await;
    settle().await;
    assert_eq!(script.calls(), 2);
    assert_eq!(header(&tokens.usable().unwrap()), "Bearer tok-1", "the old token is kept while valid");
    // Backoff: 0.5-1 s, 1-2 s, 2-4 s; the fifth call comes within 7 s of the second.
    let started = Instant::now();
    while script.calls() < 5 {
        advance(Duration::from_millis(100)).await;
        settle().await;
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(3500) && waited <= Duration::from_secs(7), "{waited:?}");
    assert!(!task.is_finished());
    // Fifth call was an error, sixth succeeds after 4-8 s more; meanwhile tok-1 ran out at 90 s.
    advance(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(script.calls(), 6);
    assert_eq!(header(&tokens.usable().unwrap()), "Bearer tok-6");
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_never_handed_out() {
    let script = Script::new(&[Ok(100)]);
    let (tokens, _task) = Tokens::start(script.clone(), Duration::from_secs(10));
    tokens.wait_usable(Duration::from_secs(1)).await.unwrap();
    advance(Duration::from_secs(91)).await;
    settle().await;
    assert!(tokens.usable().is_none());
    let waited = Instant::now();
    assert!(tokens.wait_usable(Duration::from_secs(2)).await.is_none());
    assert_eq!(waited.elapsed(), Duration::from_secs(2), "waits its bound, then gives up");
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_share_the_first_fetch() {
    let mut script = Script::new(&[Ok(3600)]);
    script.delay = Duration::from_millis(500);
    let (tokens, _task) = Tokens::start(script.clone(), Duration::from_secs(10));
    let waits = (0..100).map(|_| {
        let tokens = tokens.clone();
        tokio::spawn(async move { tokens.wait_usable(Duration::from_secs(5)).await })
    });
    for wait in waits.collect::<Vec<_>>() {
        assert_eq!(header(&wait.await.unwrap().unwrap()), "Bearer tok-1");
    }
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn rejections_of_one_token_cause_one_refresh_and_are_rate_limited() {
    let mut script = Script::new(&[Ok(3600), Ok(3600), Ok(3600)]);
    script.delay = Duration::from_millis(50);
    let (tokens, _task) = Tokens::start(script.clone(), Duration::from_secs(10));
    let first = tokens.wait_usable(Duration::from_secs(1)).await.unwrap();
    let replacements = (0..20).map(|_| {
        let (tokens, first) = (tokens.clone(), first.clone());
        tokio::spawn(async move { tokens.replace_rejected(&first, Duration::from_secs(5)).await })
    });
    for r in replacements.collect::<Vec<_>>() {
        assert_eq!(header(&r.await.unwrap().unwrap()), "Bearer tok-2");
    }
    assert_eq!(script.calls(), 2, "twenty rejections, one refresh");
    // The new token is rejected at once too: within the interval, no refresh.
    let second = tokens.usable().unwrap();
    assert!(tokens.replace_rejected(&second, Duration::from_secs(5)).await.is_none());
    assert_eq!(script.calls(), 2);
    // After the interval, one more forced refresh is allowed.
    advance(Duration::from_secs(10)).await;
    let third = tokens.replace_rejected(&second, Duration::from_secs(5)).await.unwrap();
    assert_eq!(header(&third), "Bearer tok-3");
    assert_eq!(script.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_refresher_stops_when_no_one_holds_the_tokens() {
    let script = Script::new(&[Ok(3600)]);
    let (tokens, task) = Tokens::start(script, Duration::from_secs(10));
    drop(tokens);
    tokio::time::timeout(Duration::from_secs(1), task).await.unwrap().unwrap();
}

#[test]
fn debug_of_a_token_hides_it() {
    let grant =
        Grant { access_token: SecretString::from("s3cr3t-token".to_owned()), lifetime: Duration::from_secs(60) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let token = rt.block_on(async { Token::new(&grant, 1, Instant::now()).unwrap() });
    let shown = format!("{token:?} {:?}", token.header());
    assert!(!shown.contains("s3cr3t"), "{shown}");
}
