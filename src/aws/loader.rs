//! Reads of one region's load balancers, asked for one name at a time by their actors and made
//! together (a data loader): DescribeLoadBalancers and DescribeTargetGroups answer for up to
//! [`BY_NAME`] names a call, or for the whole region in pages of [`PAGE`]. A restart or a resync of
//! 1,000 ELBs then costs 3 calls of the account's describe bucket instead of 1,000, which the
//! console, Terraform and every other tool of the account share.
//!
//! Each actor still plans and changes its own load balancer: only the read is shared. A read
//! answers only those who asked before it was sent, so what an actor reads is never older than
//! its question (a resync stays a fresh read; a read after a change sees the change).
//!
//! A question to an idle loader is read at once, alone: a lone change waits for nothing. Questions
//! that come while a read is on its way or others gather (a resync tick starts every actor at
//! once) wait for each other until none has come for [`QUIET`], for at most [`MOST`]; during a
//! round of the fleet (start-up, relist: see [`round`]) every question gathers, longer. Then the
//! read that takes fewer calls is made (see [`Read::cheaper`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{AwsError, ErrorKind};

/// Names a call may ask for (DescribeLoadBalancers' and DescribeTargetGroups' limit).
pub const BY_NAME: usize = 20;
/// Load balancers a page of a whole region's read holds at most (the largest page AWS answers).
pub const PAGE: usize = 400;
/// Members a page holds at most, as far as the last page tells: a region of large ELBs is read in
/// smaller pages (1,000 members each: 40 a page), so that no answer is tens of MiB.
pub const PAGE_MEMBERS: usize = 40_000;
/// The first page of a region whose load balancers' size is not known yet.
pub const FIRST_PAGE: usize = 200;
/// Questions to a busy loader less than this apart are answered by one read: long enough for a
/// restart's actors to start one after the other (a few milliseconds each), short beside what
/// AWS takes to answer.
pub const QUIET: Duration = Duration::from_millis(20);
/// The longest a question waits for others.
pub const MOST: Duration = Duration::from_secs(1);
/// During a round (see [`round`]): questions this close gather, for at most [`ROUND_MOST`].
pub const ROUND_QUIET: Duration = Duration::from_millis(100);
pub const ROUND_MOST: Duration = Duration::from_secs(2);

/// Says whether a round of the fleet is under way (start-up, relist: every actor is about to
/// ask): while it is, no question is read alone, and questions gather longer ([`ROUND_QUIET`]),
/// however slowly the actors start (a loaded machine); a question outside a round to an idle
/// loader is read at once. Process-wide, as the fleet is (see [`Pulse::process`]).
pub fn round(on: bool) {
    Pulse::process()
        .round
        .store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The two reads AWS offers; each call takes its own share of the region's quota.
#[async_trait]
pub trait Reads: Send + Sync + 'static {
    /// What is read of one load balancer.
    type Item: Clone + Send + 'static;
    /// One call for `names` (at most [`BY_NAME`]). AWS fails the whole call with `NotFound`
    /// when one of them does not exist.
    async fn named(&self, names: &[String]) -> Result<Vec<(String, Self::Item)>, AwsError>;
    /// One call: the page of at most `size` load balancers of the whole region after `marker`,
    /// and the next page's marker.
    async fn page(
        &self,
        marker: Option<String>,
        size: usize,
    ) -> Result<(Vec<(String, Self::Item)>, Option<String>), AwsError>;
    /// How many members `item` holds (what makes a page heavy).
    fn weight(item: &Self::Item) -> usize;
    /// The error that says `name` is not among what AWS answered, in AWS's words (its code).
    fn missing(&self, name: &str) -> AwsError;
}

/// How a batch of names is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// By name, [`BY_NAME`] to a call.
    Named,
    /// The whole region, page by page.
    Region,
}

/// A region as its last whole read found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// Its load balancers.
    pub count: usize,
    /// How many a page holds (see [`PAGE_MEMBERS`]).
    pub page: usize,
}

impl Known {
    fn pages(self) -> usize {
        self.count.div_ceil(self.page).max(1)
    }
}

/// The page size that keeps a page within [`PAGE_MEMBERS`], `count` load balancers having held
/// `weight` members.
fn fit(count: usize, weight: usize) -> usize {
    match count {
        0 => PAGE,
        _ => (PAGE_MEMBERS * count / weight.max(1)).clamp(1, PAGE),
    }
}

impl Read {
    /// The read of `asked` names that takes fewer calls, the region as its last whole read found
    /// it (unknown before one). Unknown, a whole read is made when names alone would take more
    /// than one call: it tells the region's size for next time.
    pub fn cheaper(asked: usize, known: Option<Known>) -> Read {
        let named = asked.div_ceil(BY_NAME);
        let region = match known {
            Some(known) => known.pages(),
            None if named > 1 => 1,
            None => usize::MAX,
        };
        if region < named {
            Read::Region
        } else {
            Read::Named
        }
    }
}

/// A read's answer to one name: what AWS has, or the error (`NotFound` when AWS has no load
/// balancer of that name).
pub type Answer<T> = Result<T, AwsError>;

/// When the last question was asked of any of the loaders that share it, and whether a round of
/// the fleet is under way (see [`round`]): the ELB and target-group loaders of every region and
/// account share the process's, so that a restart's burst (their actors mixed) is read as one,
/// even of a kind that has few load balancers in it.
#[derive(Clone)]
pub struct Pulse {
    last: Arc<Mutex<Instant>>,
    round: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Pulse {
    fn default() -> Self {
        Pulse {
            last: Arc::new(Mutex::new(Instant::now())),
            round: Arc::default(),
        }
    }
}

impl Pulse {
    /// The process's.
    pub fn process() -> Pulse {
        static PROCESS: std::sync::OnceLock<Pulse> = std::sync::OnceLock::new();
        PROCESS.get_or_init(Pulse::default).clone()
    }

    fn beat(&self) {
        *lock(&self.last) = Instant::now();
    }

    fn last(&self) -> Instant {
        *lock(&self.last)
    }

    fn in_round(&self) -> bool {
        self.round.load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct Waiting<T> {
    /// Who asked for which load balancer, since the last read was sent.
    asked: BTreeMap<String, Vec<oneshot::Sender<Answer<T>>>>,
    first: Option<Instant>,
    /// Reads on their way.
    in_flight: usize,
    /// The region, as its last whole read found it.
    known: Option<Known>,
}

/// One region's reads of one kind of load balancer (see the module's doc).
pub struct Loader<R: Reads> {
    reads: Arc<R>,
    waiting: Arc<Mutex<Waiting<R::Item>>>,
    pulse: Pulse,
}

/// The loaders of every region, made on first use, sharing one [`Pulse`].
pub struct Loaders<R: Reads> {
    by_region: Mutex<std::collections::HashMap<String, Arc<Loader<R>>>>,
    pulse: Pulse,
}

impl<R: Reads> Loaders<R> {
    pub fn new(pulse: Pulse) -> Self {
        Loaders {
            by_region: Mutex::default(),
            pulse,
        }
    }

    /// `region`'s loader, its reads made by `reads` the first time.
    pub fn region(&self, region: &str, reads: impl FnOnce() -> R) -> Arc<Loader<R>> {
        lock(&self.by_region)
            .entry(region.to_string())
            .or_insert_with(|| Arc::new(Loader::new(reads(), self.pulse.clone())))
            .clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<R: Reads> Loader<R> {
    pub fn new(reads: R, pulse: Pulse) -> Self {
        Loader {
            reads: Arc::new(reads),
            waiting: Arc::new(Mutex::new(Waiting {
                asked: BTreeMap::new(),
                first: None,
                in_flight: 0,
                known: None,
            })),
            pulse,
        }
    }

    /// What AWS has of load balancer `name`, from a read sent after this call. A question to an
    /// idle loader (no read on its way, none gathering) is read at once, alone: a lone change
    /// waits for nothing. Questions that come while the loader is busy gather (see the module's
    /// doc).
    pub async fn get(&self, name: &str) -> Answer<R::Item> {
        let alone = {
            let mut w = lock(&self.waiting);
            self.pulse.beat();
            let idle = w.in_flight == 0 && w.first.is_none() && !self.pulse.in_round();
            w.in_flight += usize::from(idle);
            idle
        };
        if alone {
            // Counted above, under the same lock that found the loader idle.
            let _flight = InFlight(&*self.waiting);
            let names = [name.to_string()];
            let mut answer = named(&*self.reads, &self.waiting, &names).await;
            return answer
                .remove(name)
                .unwrap_or_else(|| Err(self.reads.missing(name)));
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut w = lock(&self.waiting);
            let now = Instant::now();
            w.asked.entry(name.to_string()).or_default().push(tx);
            self.pulse.beat();
            let start = w.first.is_none();
            w.first.get_or_insert(now);
            start
        };
        if start {
            let (reads, waiting) = (self.reads.clone(), self.waiting.clone());
            tokio::spawn(gather(reads, waiting, self.pulse.clone()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(AwsError::new(
                ErrorKind::Transient,
                "Describe",
                name,
                "the read was dropped",
            ))
        })
    }
}

/// A read on its way, counted while it lives: whatever ends it (an answer, an error, the caller's
/// future dropped mid-read when its actor stops), the count goes down.
struct InFlight<'a, T>(&'a Mutex<Waiting<T>>);

impl<'a, T> InFlight<'a, T> {
    fn new(waiting: &'a Mutex<Waiting<T>>) -> Self {
        lock(waiting).in_flight += 1;
        InFlight(waiting)
    }
}

impl<T> Drop for InFlight<'_, T> {
    fn drop(&mut self) {
        lock(self.0).in_flight -= 1;
    }
}

/// Waits until questions stop coming (or [`MOST`]), then reads for all that were asked.
async fn gather<R: Reads>(reads: Arc<R>, waiting: Arc<Mutex<Waiting<R::Item>>>, pulse: Pulse) {
    let (mut asked, known) = loop {
        let due = {
            let mut w = lock(&waiting);
            let last = pulse.last();
            let (quiet, most) = match pulse.in_round() {
                true => (ROUND_QUIET, ROUND_MOST),
                false => (QUIET, MOST),
            };
            let due = (last + quiet).min(w.first.unwrap_or(last) + most);
            if Instant::now() >= due {
                w.first = None;
                break (std::mem::take(&mut w.asked), w.known);
            }
            due
        };
        tokio::time::sleep_until(due).await;
    };
    let _flight = InFlight::new(&waiting);
    match Read::cheaper(asked.len(), known) {
        Read::Region => {
            // Each page's answers go out as it arrives: a region of large ELBs is never held
            // whole.
            let read = region(&*reads, &waiting, |name, item| {
                if let Some(waiters) = asked.remove(&name) {
                    send(waiters, Ok(item));
                }
            })
            .await;
            for (name, waiters) in asked {
                let answer = match &read {
                    Ok(()) => Err(reads.missing(&name)),
                    Err(e) => Err(e.clone()),
                };
                send(waiters, answer);
            }
        }
        Read::Named => {
            let names: Vec<String> = asked.keys().cloned().collect();
            let mut answers = named(&*reads, &waiting, &names).await;
            for (name, waiters) in asked {
                let answer = answers
                    .remove(&name)
                    .unwrap_or_else(|| Err(reads.missing(&name)));
                send(waiters, answer);
            }
        }
    }
}

/// `answer` to everyone who asked for one load balancer (a clone only for a second asker).
fn send<T: Clone>(waiters: Vec<oneshot::Sender<Answer<T>>>, answer: Answer<T>) {
    let mut waiters = waiters.into_iter().peekable();
    while let Some(tx) = waiters.next() {
        if waiters.peek().is_none() {
            let _ = tx.send(answer);
            break;
        }
        let _ = tx.send(answer.clone());
    }
}

/// Every load balancer of the region, page by page, each handed to `found` as its page arrives;
/// the pages sized by what the pages before held (see [`PAGE_MEMBERS`]), and the region noted
/// for next time.
async fn region<R: Reads>(
    reads: &R,
    waiting: &Mutex<Waiting<R::Item>>,
    mut found: impl FnMut(String, R::Item),
) -> Result<(), AwsError> {
    let mut size = lock(waiting).known.map_or(FIRST_PAGE, |k| k.page);
    let (mut count, mut weight, mut marker) = (0, 0, None);
    loop {
        let (page, next) = reads.page(marker, size).await?;
        count += page.len();
        for (name, item) in page {
            weight += R::weight(&item);
            found(name, item);
        }
        size = fit(count, weight);
        marker = next;
        if marker.is_none() {
            break;
        }
    }
    lock(waiting).known = Some(Known { count, page: size });
    Ok(())
}

/// Each of `names`' answer in `read`: found, not there, or the read's error.
fn answers<R: Reads>(
    reads: &R,
    names: &[String],
    read: Result<BTreeMap<String, R::Item>, AwsError>,
) -> BTreeMap<String, Answer<R::Item>> {
    match read {
        Ok(mut found) => names
            .iter()
            .map(|n| (n.clone(), found.remove(n).ok_or_else(|| reads.missing(n))))
            .collect(),
        Err(e) => names.iter().map(|n| (n.clone(), Err(e.clone()))).collect(),
    }
}

/// `names` by name, [`BY_NAME`] to a call, the calls side by side (the quota paces them). A call
/// that fails because one of its names does not exist is made again the cheaper way: name by
/// name, or the whole region (when its size is known).
async fn named<R: Reads>(
    reads: &R,
    waiting: &Mutex<Waiting<R::Item>>,
    names: &[String],
) -> BTreeMap<String, Answer<R::Item>> {
    let calls = names.chunks(BY_NAME).map(|chunk| async move {
        match reads.named(chunk).await {
            Ok(found) => answers(reads, chunk, Ok(found.into_iter().collect())),
            Err(e) if e.kind == ErrorKind::NotFound && chunk.len() == 1 => {
                BTreeMap::from([(chunk[0].clone(), Err(e))])
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                let pages = lock(waiting).known.map(Known::pages);
                if pages.is_some_and(|pages| pages < chunk.len()) {
                    let mut found = BTreeMap::new();
                    let read = region(reads, waiting, |name, item| {
                        if chunk.contains(&name) {
                            found.insert(name, item);
                        }
                    })
                    .await;
                    answers(reads, chunk, read.map(|()| found))
                } else {
                    one_by_one(reads, chunk).await
                }
            }
            Err(e) => chunk.iter().map(|n| (n.clone(), Err(e.clone()))).collect(),
        }
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Each of `names` in a call of its own.
async fn one_by_one<R: Reads>(reads: &R, names: &[String]) -> BTreeMap<String, Answer<R::Item>> {
    let calls = names.iter().map(|name| async move {
        let answer = match reads.named(std::slice::from_ref(name)).await {
            Ok(found) => found
                .into_iter()
                .next()
                .map(|(_, item)| item)
                .ok_or_else(|| reads.missing(name)),
            Err(e) => Err(e),
        };
        (name.clone(), answer)
    });
    futures::future::join_all(calls).await.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// How long the fake AWS takes to answer (on tokio's paused clock).
    const LATENCY: Duration = Duration::from_millis(5);

    /// A region of `size` load balancers `lb0`…, each read as its own name; counts calls.
    struct Region {
        size: usize,
        named: AtomicUsize,
        pages: AtomicUsize,
        fail: Option<ErrorKind>,
    }

    fn region(size: usize) -> Region {
        Region {
            size,
            named: AtomicUsize::new(0),
            pages: AtomicUsize::new(0),
            fail: None,
        }
    }

    #[async_trait]
    impl Reads for Region {
        type Item = String;
        async fn named(&self, names: &[String]) -> Result<Vec<(String, String)>, AwsError> {
            self.named.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(LATENCY).await;
            if let Some(kind) = self.fail {
                return Err(AwsError::new(kind, "Describe", "names", "Throttling"));
            }
            let exists = |n: &String| n[2..].parse::<usize>().is_ok_and(|i| i < self.size);
            if let Some(missing) = names.iter().find(|n| !exists(n)) {
                return Err(AwsError::not_found(
                    "Describe",
                    missing,
                    "LoadBalancerNotFound",
                ));
            }
            Ok(names.iter().map(|n| (n.clone(), n.clone())).collect())
        }
        async fn page(
            &self,
            marker: Option<String>,
            size: usize,
        ) -> Result<(Vec<(String, String)>, Option<String>), AwsError> {
            self.pages.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(LATENCY).await;
            if let Some(kind) = self.fail {
                return Err(AwsError::new(kind, "Describe", "region", "Throttling"));
            }
            let from = marker.map_or(0, |m| m.parse().unwrap());
            let to = (from + size).min(self.size);
            let page = (from..to).map(|i| (format!("lb{i}"), format!("lb{i}")));
            Ok((page.collect(), (to < self.size).then(|| to.to_string())))
        }
        fn weight(_: &String) -> usize {
            1
        }
        fn missing(&self, name: &str) -> AwsError {
            AwsError::not_found("Describe", name, "not in the region's read")
        }
    }

    /// `names` asked for at once; the answers, and the calls (named, pages) they took.
    async fn ask(
        loader: &Loader<Region>,
        names: impl Iterator<Item = String>,
    ) -> (Vec<Answer<String>>, (usize, usize)) {
        let before = calls(loader);
        let answers =
            futures::future::join_all(names.map(|n| async move { loader.get(&n).await })).await;
        // The answers of a region's read go out page by page: count once every page is read.
        while lock(&loader.waiting).in_flight > 0 {
            tokio::time::sleep(LATENCY).await;
        }
        let after = calls(loader);
        (answers, (after.0 - before.0, after.1 - before.1))
    }

    fn calls(loader: &Loader<Region>) -> (usize, usize) {
        let r = &loader.reads;
        (
            r.named.load(Ordering::SeqCst),
            r.pages.load(Ordering::SeqCst),
        )
    }

    impl Loader<Region> {
        fn new_alone(r: Region) -> Self {
            Loader::new(r, Pulse::default())
        }
    }

    fn lbs(range: std::ops::Range<usize>) -> impl Iterator<Item = String> {
        range.map(|i| format!("lb{i}"))
    }

    #[test]
    fn the_cheaper_read_is_made() {
        assert_eq!(Read::cheaper(1, None), Read::Named);
        assert_eq!(Read::cheaper(20, None), Read::Named);
        // Unknown, a read that takes more than one call reads the region: it learns its size.
        assert_eq!(Read::cheaper(21, None), Read::Region);
        let known = |count, page| Some(Known { count, page });
        assert_eq!(Read::cheaper(21, known(1_000, 400)), Read::Named);
        assert_eq!(Read::cheaper(61, known(1_000, 400)), Read::Region);
        assert_eq!(Read::cheaper(3, known(0, 400)), Read::Named);
        // ELBs of 1,000 members: 40 a page, 25 pages: by name unless more than 480 are asked.
        assert_eq!(Read::cheaper(480, known(1_000, 40)), Read::Named);
        assert_eq!(Read::cheaper(520, known(1_000, 40)), Read::Region);
    }

    /// A page holds at most PAGE_MEMBERS members, as far as the pages before tell.
    #[test]
    fn pages_of_large_load_balancers_are_smaller() {
        assert_eq!(fit(100, 100), PAGE);
        assert_eq!(fit(100, 100_000), 40);
        assert_eq!(fit(10, 1_000_000), 1);
        assert_eq!(fit(0, 0), PAGE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_asked_at_once_take_four_calls_and_then_names_go_twenty_to_a_call() {
        let loader = Loader::new_alone(region(1_000));
        let (answers, calls) = ask(&loader, lbs(0..1_000)).await;
        // The first question alone, at once; the 999 others gather while it is on its way: a
        // first page of 200 (their size unknown), then pages of 400.
        assert_eq!(calls, (1, 3));
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.unwrap(), format!("lb{i}"));
        }
        // The region's size is known now: 49 names take 3 calls by name (the region 3 pages).
        let (answers, calls) = ask(&loader, lbs(0..50)).await;
        assert_eq!(calls, (1 + 3, 0));
        assert!(answers.iter().all(|a| a.is_ok()));
        let (_, calls) = ask(&loader, lbs(0..70)).await;
        assert_eq!(calls, (1, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn one_load_balancer_gone_does_not_fail_the_others() {
        let loader = Loader::new_alone(region(10));
        let asked = lbs(5..12).chain(["lb7".to_string()]);
        let (answers, calls) = ask(&loader, asked).await;
        // lb5 at once; one call for the 6 others fails for lb10 and lb11: each is read alone.
        assert_eq!(calls, (1 + 1 + 6, 0));
        let found: Vec<bool> = answers.iter().map(|a| a.is_ok()).collect();
        assert_eq!(found, [true, true, true, true, true, false, false, true]);
        // With the region's size known (10), a whole read is cheaper than 7 calls.
        ask(&loader, lbs(0..30)).await;
        let (answers, calls) = ask(&loader, lbs(5..12)).await;
        assert_eq!(calls, (1 + 1, 1));
        let gone: Vec<&AwsError> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|e| e.kind == ErrorKind::NotFound));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_fails_everyone_who_asked() {
        let mut r = region(100);
        r.fail = Some(ErrorKind::Throttled);
        let loader = Loader::new_alone(r);
        let (answers, _) = ask(&loader, lbs(0..40)).await;
        assert!(answers
            .iter()
            .all(|a| a.as_ref().unwrap_err().kind == ErrorKind::Throttled));
    }

    /// A question asked while a read is on its way is answered by a read sent after it.
    #[tokio::test(start_paused = true)]
    async fn an_answer_is_never_older_than_its_question() {
        let loader = Arc::new(Loader::new_alone(region(5)));
        let first = tokio::spawn({
            let loader = loader.clone();
            async move { loader.get("lb1").await }
        });
        tokio::time::sleep(QUIET * 2).await;
        assert_eq!(calls(&loader), (1, 0));
        loader.get("lb1").await.unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(calls(&loader), (2, 0));
        // Questions that keep coming wait for each other no longer than MOST.
        let steady = tokio::spawn({
            let loader = loader.clone();
            async move {
                for i in 0..200 {
                    tokio::time::sleep(QUIET / 2).await;
                    let loader = loader.clone();
                    tokio::spawn(async move { loader.get(&format!("lb{}", i % 5)).await });
                }
            }
        });
        tokio::time::sleep(QUIET).await;
        let start = Instant::now();
        loader.get("lb0").await.unwrap();
        steady.abort();
        assert!(start.elapsed() <= MOST + QUIET);
    }
}
