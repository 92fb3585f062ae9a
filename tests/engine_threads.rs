//! A stopped pipeline leaves no threads behind. (Alone in its test binary so that no other
//! test's threads come and go while it counts.)

mod common;

use std::time::{Duration, Instant};

use visiond::pipeline::engine::Engine;
use visiond::pipeline::stats::PipelineState;

use common::{Pipeline, Source, no_models};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// The threads' names, for the failure message: a leak shows as one name repeated.
fn thread_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    names.sort();
    names
}

/// Waits for the count to settle: GStreamer's pool threads exit shortly after their last task.
fn settled_threads() -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = threads();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = threads();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

#[test]
fn running_pipelines_again_and_again_does_not_grow_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    std::fs::write(
        dir.path().join("visiond.yaml"),
        "pipelines_dir: pipelines\nrtsp: { port: 0 }\n",
    )
    .unwrap();
    let pipeline = Pipeline::new("a")
        .source(Source::test(64, 48).frames(15))
        .model("none")
        .file_sink(&dir.path().join("a.mp4"))
        .rtsp_sink("/a")
        .jsonl(&dir.path().join("a.jsonl"));
    std::fs::write(dir.path().join("pipelines/a.yaml"), pipeline.yaml()).unwrap();
    let config = visiond::preflight::load(&dir.path().join("visiond.yaml")).unwrap();
    let run = || {
        let reports = Engine::start(&config, &no_models).unwrap().wait();
        assert_eq!(reports[0].state, PipelineState::Finished);
    };
    // The first run starts what lives for the whole process (GStreamer's registry, pools).
    // GLib keeps up to two idle pool threads process-wide and GStreamer starts some helpers
    // lazily, so one or two more may appear later whatever visiond does; a thread left by
    // every run would show as six.
    const MORE_RUNS: usize = 6;
    const PROCESS_WIDE_SLACK: usize = 2;
    run();
    let after_first = settled_threads();
    for _ in 0..MORE_RUNS {
        run();
    }
    let after_more = settled_threads();
    assert!(
        after_more <= after_first + PROCESS_WIDE_SLACK,
        "threads grew from {after_first} to {after_more} over {MORE_RUNS} more runs: {:?}",
        thread_names()
    );
}
