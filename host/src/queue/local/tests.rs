use super::*;
use std::time::Instant;

fn open() -> (tempfile::TempDir, LocalQueues) {
    let dir = tempfile::tempdir().unwrap();
    let queues = LocalQueues::open(dir.path()).unwrap();
    (dir, queues)
}

fn text(body: &str) -> Outgoing {
    Outgoing {
        body: body.into(),
        ..Outgoing::default()
    }
}

fn grouped(body: &str, group: &str) -> Outgoing {
    Outgoing {
        body: body.into(),
        group_id: Some(group.into()),
        ..Outgoing::default()
    }
}

const NOW: Duration = Duration::ZERO;
const HIDE: Duration = Duration::from_secs(30);

async fn queue(queues: &LocalQueues, name: &str) -> LocalQueue {
    queues.create(name, QueueOptions::default()).await.unwrap();
    queues.queue(name).await.unwrap()
}

fn bodies(messages: &[Received]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}

#[tokio::test]
async fn a_received_message_is_hidden_until_deleted_or_its_visibility_lapses() {
    let (_dir, queues) = open();
    let q = queue(&queues, "jobs").await;
    let id = q
        .send(Outgoing {
            attributes: vec![("k".into(), "v".into())],
            ..text("hello")
        })
        .await
        .unwrap();
    let got = q
        .receive(
            10,
            NOW,
            Duration::from_millis(300),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0].id.as_str(),
            got[0].body.as_str(),
            got[0].receive_count
        ),
        (id.as_str(), "hello", 1)
    );
    assert_eq!(got[0].attributes, vec![("k".to_string(), "v".to_string())]);
    assert!(
        q.receive(10, NOW, HIDE, &CancellationToken::new())
            .await
            .unwrap()
            .is_empty()
    );

    // Visibility lapses: delivered again, counted, with a new receipt.
    let again = q
        .receive(10, Duration::from_secs(2), HIDE, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(again[0].receive_count, 2);
    assert_ne!(again[0].receipt, got[0].receipt);
    let stale = q
        .delete_batch(std::slice::from_ref(&got[0].receipt))
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    assert!(
        q.delete_batch(&[again[0].receipt.clone()])
            .await
            .unwrap()
            .is_empty()
    );
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight, stats.delayed), (0, 0, 0));
}

#[tokio::test]
async fn a_long_poll_wakes_as_soon_as_a_message_is_sent() {
    let (_dir, queues) = open();
    let q = queue(&queues, "jobs").await;
    let receiver = q.clone();
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        receiver
            .receive(1, Duration::from_secs(10), HIDE, &CancellationToken::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.send(text("wake up")).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(bodies(&got), ["wake up"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_long_poll_wakes_for_a_send_from_another_process_on_the_directory() {
    let (dir, queues) = open();
    let q = queue(&queues, "jobs").await;
    // A second, independent handle on the same directory, as another
    // process has: its own connection and wake socket.
    let other = LocalQueues::open(dir.path()).unwrap();
    let sender = other.queue("jobs").await.unwrap();
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        q.receive(1, Duration::from_secs(15), HIDE, &CancellationToken::new())
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sender.send(text("from afar")).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(bodies(&got), ["from afar"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_empty_long_poll_returns_after_its_wait() {
    let (_dir, queues) = open();
    let q = queue(&queues, "jobs").await;
    let started = Instant::now();
    assert!(
        q.receive(
            10,
            Duration::from_millis(300),
            HIDE,
            &CancellationToken::new()
        )
        .await
        .unwrap()
        .is_empty()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_delayed_message_appears_after_its_delay() {
    let (_dir, queues) = open();
    let q = queue(&queues, "jobs").await;
    q.send(Outgoing {
        delay: Duration::from_millis(400),
        ..text("later")
    })
    .await
    .unwrap();
    assert_eq!(q.stats().await.unwrap().delayed, 1);
    assert!(
        q.receive(1, NOW, HIDE, &CancellationToken::new())
            .await
            .unwrap()
            .is_empty()
    );
    let started = Instant::now();
    let got = q
        .receive(1, Duration::from_secs(5), HIDE, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(bodies(&got), ["later"]);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn heartbeats_extend_visibility_and_release_makes_it_visible_now() {
    let (_dir, queues) = open();
    let q = queue(&queues, "jobs").await;
    q.send(text("long job")).await.unwrap();
    let got = q
        .receive(
            1,
            NOW,
            Duration::from_millis(300),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let receipt = got[0].receipt.clone();
    assert!(
        q.change_visibility_batch(&[(receipt.clone(), HIDE)])
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        q.receive(1, NOW, HIDE, &CancellationToken::new())
            .await
            .unwrap()
            .is_empty(),
        "the heartbeat did not extend the lease"
    );
    assert!(
        q.change_visibility_batch(&[(receipt, NOW)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        bodies(
            &q.receive(1, NOW, HIDE, &CancellationToken::new())
                .await
                .unwrap()
        ),
        ["long job"]
    );
}

#[tokio::test]
async fn after_max_receives_a_message_moves_to_the_dead_letter_queue_and_back() {
    let (_dir, queues) = open();
    let redrive = Redrive {
        dlq: "jobs-dlq".into(),
        max_receive_count: 2,
    };
    queues
        .create(
            "jobs",
            QueueOptions {
                redrive: Some(redrive.clone()),
                ..QueueOptions::default()
            },
        )
        .await
        .unwrap();
    let q = queues.queue("jobs").await.unwrap();
    assert_eq!(q.stats().await.unwrap().redrive, Some(redrive));
    q.send(text("poison")).await.unwrap();
    for _ in 0..2 {
        let got = q
            .receive(1, NOW, HIDE, &CancellationToken::new())
            .await
            .unwrap();
        q.change_visibility_batch(&[(got[0].receipt.clone(), NOW)])
            .await
            .unwrap();
    }
    assert!(
        q.receive(1, NOW, HIDE, &CancellationToken::new())
            .await
            .unwrap()
            .is_empty()
    );
    let dead = queues.peek("jobs-dlq", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].body.as_str(), dead[0].receive_count),
        ("poison", 2)
    );
    assert_eq!(dead[0].source_queue.as_deref(), Some("jobs"));

    assert_eq!(queues.redrive("jobs-dlq", None).await.unwrap(), 1);
    let back = q
        .receive(1, NOW, HIDE, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (back[0].body.as_str(), back[0].receive_count),
        ("poison", 1)
    );
}

#[tokio::test]
async fn fifo_groups_are_delivered_in_order_one_head_at_a_time() {
    let (_dir, queues) = open();
    let q = queue(&queues, "jobs.fifo").await;
    for (body, group) in [
        ("a1", "a"),
        ("b1", "b"),
        ("a2", "a"),
        ("a3", "a"),
        ("b2", "b"),
    ] {
        q.send(grouped(body, group)).await.unwrap();
    }
    // A batch may hold several messages of one group, in order.
    let first = q
        .receive(2, NOW, HIDE, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(bodies(&first), ["a1", "b1"]);
    // Both groups are now locked while their heads are in flight.
    assert!(
        q.receive(10, NOW, HIDE, &CancellationToken::new())
            .await
            .unwrap()
            .is_empty()
    );
    // a1 failed and was released: it comes back before a2.
    q.change_visibility_batch(&[(first[0].receipt.clone(), NOW)])
        .await
        .unwrap();
    let retry = q
        .receive(10, NOW, HIDE, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(bodies(&retry), ["a1", "a2", "a3"]);
    assert_eq!(retry[0].receive_count, 2);
    q.delete_batch(&[first[1].receipt.clone()]).await.unwrap();
    assert_eq!(
        bodies(
            &q.receive(10, NOW, HIDE, &CancellationToken::new())
                .await
                .unwrap()
        ),
        ["b2"]
    );
}

#[tokio::test]
async fn fifo_duplicates_within_the_window_are_dropped() {
    let (_dir, queues) = open();
    let q = queue(&queues, "orders.fifo").await;
    let first = q
        .send(Outgoing {
            dedup_id: Some("order-1".into()),
            ..grouped("one", "g")
        })
        .await
        .unwrap();
    let again = q
        .send(Outgoing {
            dedup_id: Some("order-1".into()),
            ..grouped("one, resent", "g")
        })
        .await
        .unwrap();
    assert_eq!(first, again);
    // Without an id, the body's hash deduplicates.
    let by_body = q.send(grouped("same", "g")).await.unwrap();
    assert_eq!(q.send(grouped("same", "g")).await.unwrap(), by_body);
    assert_eq!(q.stats().await.unwrap().visible, 2);
}

#[tokio::test]
async fn queues_are_listed_purged_and_checked() {
    let (_dir, queues) = open();
    let q = queue(&queues, "b-jobs").await;
    queue(&queues, "a-jobs").await;
    assert_eq!(queues.list().await.unwrap(), ["a-jobs", "b-jobs"]);
    for i in 0..3 {
        q.send(text(&format!("m{i}"))).await.unwrap();
    }
    assert_eq!(queues.purge("b-jobs").await.unwrap(), 3);
    assert!(matches!(
        queues.queue("nope").await,
        Err(QueueError::NoSuchQueue(_))
    ));
    assert!(matches!(
        queues.queue("bad name").await,
        Err(QueueError::Invalid(_))
    ));
    let mismatched = QueueOptions {
        redrive: Some(Redrive {
            dlq: "dead".into(),
            max_receive_count: 3,
        }),
        ..QueueOptions::default()
    };
    assert!(matches!(
        queues.create("x.fifo", mismatched).await,
        Err(QueueError::Invalid(_))
    ));
    assert!(matches!(
        q.receive(11, NOW, HIDE, &CancellationToken::new()).await,
        Err(QueueError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_cancelled_long_poll_returns_at_once() {
    let (_dir, queues) = open();
    let q = queue(&queues, "jobs").await;
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stopper.cancel();
    });
    let started = Instant::now();
    assert!(
        q.receive(10, Duration::from_secs(20), HIDE, &cancel)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A dead letter is one transaction: the message leaves its queue as its
/// letter arrives, under the same id; a stale receipt moves nothing; and on
/// FIFO queues a message dead-lettered again after a redrive is not taken
/// for a duplicate of its first letter.
#[tokio::test]
async fn a_dead_letter_moves_in_one_step_under_the_same_id() {
    let (_dir, queues) = open();
    for (name, dlq) in [("jobs", "jobs-dlq"), ("jobs.fifo", "jobs-dlq.fifo")] {
        queues
            .create(
                name,
                QueueOptions {
                    redrive: Some(Redrive {
                        dlq: dlq.into(),
                        max_receive_count: 10,
                    }),
                    ..QueueOptions::default()
                },
            )
            .await
            .unwrap();
        let (q, d) = (
            queues.queue(name).await.unwrap(),
            queues.queue(dlq).await.unwrap(),
        );
        let fifo = q.is_fifo();
        let message = |body: &str| Outgoing {
            body: body.into(),
            group_id: fifo.then(|| "g".to_string()),
            ..Outgoing::default()
        };
        let id = q.send(message("poison")).await.unwrap();
        for round in 0..2 {
            let got = q
                .receive(1, NOW, HIDE, &CancellationToken::new())
                .await
                .unwrap();
            assert_eq!(got[0].id, id);
            let letter = Outgoing {
                dedup_id: fifo.then(|| id.clone()),
                attributes: vec![(SOURCE_ATTRIBUTE.into(), name.into())],
                ..message("poison, dead")
            };
            assert_eq!(
                q.dead_letter(&got[0].receipt, &d, letter.clone())
                    .await
                    .unwrap(),
                Moved::Moved,
                "{name}, round {round}"
            );
            assert_eq!(q.stats().await.unwrap().in_flight, 0);
            let dead = queues.peek(dlq, 10).await.unwrap();
            assert_eq!(dead.len(), 1, "{name}, round {round}");
            assert_eq!(dead[0].id, id);
            // The same receipt again: already moved, nothing sent.
            assert_eq!(
                q.dead_letter(&got[0].receipt, &d, letter).await.unwrap(),
                Moved::Stale
            );
            assert_eq!(queues.peek(dlq, 10).await.unwrap().len(), 1);
            assert_eq!(queues.redrive(dlq, None).await.unwrap(), 1);
        }
    }
}

#[tokio::test]
async fn empty_batches_do_nothing_on_every_call() {
    let (_dir, queues) = open();
    let q = queue(&queues, "jobs").await;
    assert_eq!(
        q.send_batch(Vec::new()).await.unwrap(),
        Vec::<String>::new()
    );
    assert!(q.delete_batch(&[]).await.unwrap().is_empty());
    assert!(q.change_visibility_batch(&[]).await.unwrap().is_empty());
    assert_eq!(q.stats().await.unwrap().visible, 0);
}

/// The embedded queue searches letters in SQL; what it picks is what
/// `LetterFilter::matches` picks over the same letters, a letter the
/// queue's own redrive moved included (its `wasq-*` attributes are its
/// sender's, so no reason or processor).
#[tokio::test]
async fn a_search_in_sql_picks_what_the_filter_picks() {
    let (_dir, queues) = open();
    let dlq = queue(&queues, "letters").await;
    let letter = |body: &str, reason: &str, plugin: &str| Outgoing {
        body: body.into(),
        attributes: vec![
            (crate::queue::REASON_ATTRIBUTE.into(), reason.into()),
            (crate::queue::PLUGIN_ATTRIBUTE.into(), plugin.into()),
        ],
        ..Outgoing::default()
    };
    dlq.send_batch(vec![
        letter("{\"job\": 1}", "trap: Out Of Bounds", "compress"),
        letter("{\"JOB\": 2}", "invalid: no files", "compress"),
        letter("plain text", "timeout", "wordcount"),
        letter("<script>x</script>", "unknown command `<script>`", "rogue"),
        letter("ünïcode Job", "reason with ß", "rogue"),
    ])
    .await
    .unwrap();
    // A letter the queue's redrive policy moved here: its attributes are
    // a sender's.
    {
        let db = queues.db.lock().unwrap();
        db.execute(
            "UPDATE messages SET source_queue = 'jobs' WHERE body = 'plain text'",
            [],
        )
        .unwrap();
    }
    let everything = queues.peek("letters", 100).await.unwrap();
    let filters = [
        LetterFilter::default(),
        LetterFilter {
            words: vec!["job".into()],
            ..LetterFilter::default()
        },
        LetterFilter {
            words: vec!["JOB".into(), "bounds".into()],
            ..LetterFilter::default()
        },
        LetterFilter {
            words: vec!["timeout".into()],
            ..LetterFilter::default()
        },
        LetterFilter {
            plugin: Some("compress".into()),
            ..LetterFilter::default()
        },
        LetterFilter {
            plugin: Some("wordcount".into()),
            ..LetterFilter::default()
        },
        LetterFilter {
            reason: Some("UNKNOWN command".into()),
            ..LetterFilter::default()
        },
        LetterFilter {
            words: vec!["<script>".into()],
            plugin: Some("rogue".into()),
            ..LetterFilter::default()
        },
        LetterFilter {
            words: vec!["%".into()],
            ..LetterFilter::default()
        },
        LetterFilter {
            id: Some(everything[1].id.clone()),
            ..LetterFilter::default()
        },
        LetterFilter {
            sent_from_ms: Some(everything[2].sent_at_ms),
            ..LetterFilter::default()
        },
        LetterFilter {
            sent_before_ms: Some(everything[2].sent_at_ms),
            ..LetterFilter::default()
        },
        LetterFilter {
            words: vec!["job".into()],
            sent_from_ms: Some(everything[0].sent_at_ms),
            sent_before_ms: Some(everything[4].sent_at_ms + 1),
            ..LetterFilter::default()
        },
        LetterFilter {
            sent_before_ms: Some(1),
            ..LetterFilter::default()
        },
    ];
    for filter in filters {
        let wanted: Vec<&str> = everything
            .iter()
            .filter(|l| filter.matches(l))
            .map(|l| l.body.as_str())
            .collect();
        let page = queues.browse("letters", &filter, 0, 100).await.unwrap();
        let found: Vec<&str> = page.letters.iter().map(|l| l.body.as_str()).collect();
        assert_eq!(found, wanted, "{filter:?}");
        assert_eq!(page.matched, wanted.len() as u64, "{filter:?}");
    }
    // Pages: offset and limit over the matches, the count over all.
    let page = queues
        .browse("letters", &LetterFilter::default(), 1, 2)
        .await
        .unwrap();
    assert_eq!(page.matched, 5);
    assert_eq!(page.letters.len(), 2);
    assert_eq!(page.letters[0].body, everything[1].body);
}

/// The full-text index is filled as letters are searched: letters sent
/// after a search, moved in by the queue's redrive, or taken out are found
/// or not found as they are now; words under three characters, which the
/// index cannot look up, still count.
#[tokio::test]
async fn the_search_index_keeps_up_with_letters_coming_and_going() {
    let (_dir, queues) = open();
    queues
        .create(
            "jobs",
            QueueOptions {
                redrive: Some(Redrive {
                    dlq: "jobs-dlq".into(),
                    max_receive_count: 1,
                }),
                ..QueueOptions::default()
            },
        )
        .await
        .unwrap();
    let dlq = queue(&queues, "jobs-dlq").await;
    let search = |words: &[&str]| {
        let filter = LetterFilter {
            words: words.iter().map(|w| w.to_string()).collect(),
            ..LetterFilter::default()
        };
        let queues = queues.clone();
        async move {
            let page = queues.browse("jobs-dlq", &filter, 0, 100).await.unwrap();
            let mut bodies: Vec<String> = page.letters.into_iter().map(|l| l.body).collect();
            bodies.sort();
            bodies
        }
    };
    // Sent before the index is first made, moved to the letters after.
    let jobs = queues.queue("jobs").await.unwrap();
    jobs.send(text("third order poisoned")).await.unwrap();
    queue(&queues, "elsewhere")
        .await
        .send(text("fourth order handed over"))
        .await
        .unwrap();
    dlq.send(text("first order failed")).await.unwrap();
    assert_eq!(search(&["ORDER"]).await, ["first order failed"]);
    // Sent after the index was made.
    dlq.send(text("second order failed")).await.unwrap();
    assert_eq!(
        search(&["order", "failed"]).await,
        ["first order failed", "second order failed"]
    );
    // Moved here by the queue's redrive after one receive too many.
    let got = jobs
        .receive(1, NOW, HIDE, &CancellationToken::new())
        .await
        .unwrap();
    jobs.change_visibility_batch(&[(got[0].receipt.clone(), NOW)])
        .await
        .unwrap();
    assert!(
        jobs.receive(1, NOW, HIDE, &CancellationToken::new())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(search(&["poisoned"]).await, ["third order poisoned"]);
    assert_eq!(search(&["order"]).await.len(), 3);
    // Moved in by another way (a redrive from elsewhere clears its
    // source), below the index's mark.
    {
        let db = queues.db.lock().unwrap();
        db.execute(
            "UPDATE messages SET queue = 'jobs-dlq', source_queue = NULL WHERE body = 'fourth order handed over'",
            [],
        )
        .unwrap();
    }
    assert_eq!(search(&["handed"]).await, ["fourth order handed over"]);
    {
        let db = queues.db.lock().unwrap();
        db.execute(
            "DELETE FROM messages WHERE body = 'fourth order handed over'",
            [],
        )
        .unwrap();
    }
    // A NUL cannot go into the index's query; the word is still checked.
    assert!(search(&["ord\0er"]).await.is_empty());
    // A short word is checked in the rows the long ones found, or in all.
    assert_eq!(search(&["order", "st"]).await, ["first order failed"]);
    assert_eq!(
        search(&["ir"]).await,
        ["first order failed", "third order poisoned"]
    );
    // Taken out: no longer found, though the index may keep its entry.
    let first = queues
        .matching_ids(
            "jobs-dlq",
            &LetterFilter {
                words: vec!["first".into()],
                ..LetterFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    let done = queues
        .settle_letters(
            "jobs-dlq",
            &first,
            crate::queue::LetterAction::Delete,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(done, 1);
    assert_eq!(
        search(&["order"]).await,
        ["second order failed", "third order poisoned"]
    );
    // What a deletion of chosen letters or a redrive back takes out
    // leaves the index; a delete made otherwise (as the dispatcher's) leaves
    // its entry, which the search does not show.
    let entries = || -> i64 {
        let db = queues.db.lock().unwrap();
        db.query_row("SELECT count(*) FROM letters_text", [], |row| row.get(0))
            .unwrap()
    };
    assert_eq!(
        entries(),
        3,
        "second, third, and the fourth deleted by hand"
    );
    let third = queues
        .matching_ids(
            "jobs-dlq",
            &LetterFilter {
                words: vec!["poisoned".into()],
                ..LetterFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    queues
        .settle_letters(
            "jobs-dlq",
            &third,
            crate::queue::LetterAction::Redrive,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(entries(), 2);
    assert_eq!(search(&["order"]).await, ["second order failed"]);
}

/// Many letters are indexed a chunk at a time, and all of them are found.
#[tokio::test]
async fn a_large_queue_is_indexed_in_chunks_and_wholly() {
    let (_dir, queues) = open();
    let dlq = queue(&queues, "letters").await;
    for batch in 0..1_201 {
        dlq.send_batch(
            (0..10)
                .map(|i| text(&format!("letter number-{}", batch * 10 + i)))
                .collect(),
        )
        .await
        .unwrap();
    }
    for (word, found) in [
        ("number-0", 1),
        ("number-12009", 1),
        ("number-1200", 11),
        ("letter", 12_010),
    ] {
        let filter = LetterFilter {
            words: vec![word.into()],
            ..LetterFilter::default()
        };
        let page = queues.browse("letters", &filter, 0, 5).await.unwrap();
        assert_eq!(page.matched, found, "{word}");
    }
}
