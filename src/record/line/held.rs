//! Access lines held back while a runtime thread has work, and written together when it is about
//! to wait for more: under load, one write carries many lines instead of one write a request.
//!
//! Only a thread that said it waits for work ([`idle`], called by the runtime before each wait)
//! holds lines; any other writes each at once. Held lines never wait long: they are written when
//! the thread next waits, when they reach [`MOST_BYTES`] or when the first is [`LONGEST`] old,
//! before any other line the thread writes (so a thread's lines keep their order), and when the
//! thread stops ([`release`]).

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

/// Held lines are written once they reach this size,
const MOST_BYTES: usize = 16 * 1024;
/// or once the first of them is this old, even on a thread that has not waited since.
const LONGEST: Duration = Duration::from_millis(250);

struct Held {
    text: Vec<u8>,
    /// The thread waits for work now and then, and writes what it holds before it does.
    holds: bool,
    /// When the first of the held lines was made.
    since: SystemTime,
}

impl Held {
    fn write_out(&mut self) {
        if !self.text.is_empty() {
            emit(&self.text);
            self.text.clear();
        }
    }
}

/// One write to standard error (or, in this module's tests, to the thread's list of writes).
fn emit(text: &[u8]) {
    #[cfg(test)]
    if tests::WRITES.with(|writes| writes.borrow_mut().as_mut().map(|w| w.push(text.to_vec()))).is_some() {
        return;
    }
    let _ = std::io::stderr().lock().write_all(text);
}

/// A thread that ends without [`release`] still writes what it held.
impl Drop for Held {
    fn drop(&mut self) {
        self.write_out();
    }
}

thread_local! {
    static HELD: RefCell<Held> =
        const { RefCell::new(Held { text: Vec::new(), holds: false, since: SystemTime::UNIX_EPOCH }) };
}

/// Writes the access line `line`, made at `now`: held on a thread that holds lines, at once on
/// any other.
pub fn line(line: &[u8], now: SystemTime) {
    let held = HELD.try_with(|held| {
        let Ok(mut held) = held.try_borrow_mut() else { return false };
        if !held.holds {
            return false;
        }
        if held.text.is_empty() {
            held.since = now;
        }
        held.text.extend_from_slice(line);
        if held.text.len() >= MOST_BYTES || now.duration_since(held.since).is_ok_and(|age| age >= LONGEST) {
            held.write_out();
        }
        true
    });
    if held != Ok(true) {
        emit(line);
    }
}

/// The thread is about to wait for work: writes what it holds, and holds its access lines from
/// now until it next waits.
pub fn idle() {
    with(|held| {
        held.holds = true;
        held.write_out();
    });
}

/// Writes what the thread holds, before a line that is not an access line.
pub fn flush() {
    with(Held::write_out);
}

/// The thread serves no more (a runtime's worker stopping, or the thread that ran the runtime
/// once it ended): writes what it holds and holds no more lines.
pub fn release() {
    with(|held| {
        held.holds = false;
        held.write_out();
    });
}

fn with(f: impl FnOnce(&mut Held)) {
    let _ = HELD.try_with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            f(&mut held);
        }
    });
}

/// Standard error for the general formatter: what the thread holds is written first.
pub fn stderr() -> std::io::Stderr {
    flush();
    std::io::stderr()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::*;

    thread_local! {
        /// The writes this thread made, when a test collects them.
        pub static WRITES: RefCell<Option<Vec<Vec<u8>>>> = const { RefCell::new(None) };
    }

    /// Runs `f` on a new thread (which holds nothing yet) and returns the writes it made.
    fn writes(f: impl FnOnce() + Send + 'static) -> Vec<Vec<u8>> {
        std::thread::spawn(|| {
            WRITES.set(Some(Vec::new()));
            f();
            WRITES.take().unwrap()
        })
        .join()
        .unwrap()
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(ms)
    }

    #[test]
    fn a_thread_that_never_waits_for_work_writes_each_line_at_once() {
        let w = writes(|| {
            line(b"a\n", at(0));
            line(b"b\n", at(1));
        });
        assert_eq!(w, [b"a\n".to_vec(), b"b\n".to_vec()]);
    }

    #[test]
    fn lines_are_held_until_the_thread_waits_or_writes_another_line() {
        let w = writes(|| {
            idle();
            line(b"a\n", at(0));
            line(b"b\n", at(1));
            idle();
            line(b"c\n", at(2));
            flush();
            line(b"d\n", at(3));
            release();
            line(b"e\n", at(4));
        });
        assert_eq!(w, [b"a\nb\n".to_vec(), b"c\n".to_vec(), b"d\n".to_vec(), b"e\n".to_vec()]);
    }

    #[test]
    fn held_lines_are_written_when_they_are_many_or_old() {
        let line_of = |n: usize| vec![b'x'; n];
        let w = writes(move || {
            idle();
            line(&line_of(MOST_BYTES - 1), at(0));
            line(b"\n", at(1));
            line(b"old\n", at(10));
            line(b"older\n", at(10 + LONGEST.as_millis() as u64));
            line(b"new\n", at(11 + LONGEST.as_millis() as u64));
            release();
        });
        assert_eq!(w.len(), 3, "{:?}", w.iter().map(Vec::len).collect::<Vec<_>>());
        assert_eq!(w[0].len(), MOST_BYTES);
        assert_eq!(w[1], b"old\nolder\n");
        assert_eq!(w[2], b"new\n");
    }

    #[derive(Debug, Clone)]
    enum Step {
        Line(Vec<u8>, u64),
        Idle,
        Flush,
        Release,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (proptest::collection::vec(any::<u8>(), 0..6000), 0u64..400).prop_map(|(l, dt)| Step::Line(l, dt)),
            1 => Just(Step::Idle),
            1 => Just(Step::Flush),
            1 => Just(Step::Release),
        ]
    }

    proptest! {
        /// Whatever happens, every line is written once, whole and in order; nothing is left
        /// held after the thread waits, writes another line or stops; a held line is written
        /// before it is [`LONGEST`] old (by the next line's time), and what is held stays under
        /// [`MOST_BYTES`].
        #[test]
        fn every_line_is_written_once_in_order_and_none_waits_long(steps in proptest::collection::vec(step(), 0..40)) {
            let (steps_for_thread, steps) = (steps.clone(), steps);
            let w = writes(move || {
                let mut now = 0;
                for step in steps_for_thread {
                    match step {
                        Step::Line(ref l, dt) => {
                            now += dt;
                            line(l, at(now));
                        }
                        Step::Idle => idle(),
                        Step::Flush => flush(),
                        Step::Release => release(),
                    }
                    let (held, since) = HELD.with(|h| (h.borrow().text.len(), h.borrow().since));
                    assert!(held < MOST_BYTES, "{held} bytes held");
                    if held > 0 {
                        assert!(at(now).duration_since(since).unwrap() < LONGEST);
                    }
                    if matches!(step, Step::Idle | Step::Flush | Step::Release) {
                        assert_eq!(held, 0);
                    }
                }
                release();
            });
            let expected: Vec<u8> = steps.iter().filter_map(|s| match s { Step::Line(l, _) => Some(l.clone()), _ => None }).flatten().collect();
            prop_assert_eq!(w.concat(), expected);
            // A line is never split between two writes.
            let mut bounds = vec![0];
            for s in &steps {
                if let Step::Line(l, _) = s {
                    bounds.push(bounds.last().unwrap() + l.len());
                }
            }
            let mut end = 0;
            for write in &w {
                end += write.len();
                prop_assert!(bounds.contains(&end), "a write ends inside a line");
            }
        }
    }
}
