//! A pipeline's output thread: publishes each frame to its video output and its metadata
//! targets, and rebuilds a video output that failed (a full disk, a sink that errored) with
//! backoff, so one bad moment does not end publishing for the months the daemon runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::metadata::{self, Drops, JsonlTarget};
use super::stats::PipelineStats;
use crate::config::SinkConfig;
use crate::frames::{DropCounter, Processed};
use crate::media::MediaError;
use crate::media::output::{OutputSettings, VideoOutput};
use crate::media::rtsp_server::RtspMounts;

/// The first wait before a failed output is rebuilt, and the longest.
const REBUILD_FIRST: Duration = Duration::from_secs(1);
const REBUILD_MAX: Duration = Duration::from_secs(60);

/// A pipeline's drop counters, as its metadata lines and metrics report them.
#[derive(Clone)]
pub struct HopDrops {
    /// Between the source and the model (or the output, without a model).
    pub input: Arc<DropCounter>,
    /// After the model (or the source, without one) up to the encoder, whose own bounded
    /// queue counts here too.
    pub output: Arc<DropCounter>,
}

/// Everything needed to (re)build and feed one pipeline's outputs.
pub struct OutputStage {
    settings: OutputSettings,
    rtsp: Option<RtspMounts>,
    /// The model's name in metadata lines (`none` without one).
    model: String,
    video: Option<VideoOutput>,
    /// While set, the video output is down and is rebuilt at this instant.
    down_until: Option<Instant>,
    backoff: Backoff,
    targets: Vec<JsonlTarget>,
    stats: Arc<PipelineStats>,
    drops: HopDrops,
    reported: Drops,
    /// Some sink shows the picture (`depth16` sinks take only the raw depth).
    publishes_pictures: bool,
}

impl OutputStage {
    /// Builds and starts the video output (a failure here fails the pipeline's build).
    pub fn start(
        settings: OutputSettings,
        rtsp: Option<RtspMounts>,
        model: String,
        targets: Vec<JsonlTarget>,
        stats: Arc<PipelineStats>,
        drops: HopDrops,
    ) -> Result<Self, MediaError> {
        let video = VideoOutput::start(&settings, rtsp.as_ref(), drops.output.clone())?;
        let publishes_pictures = settings
            .sinks
            .iter()
            .any(|sink| !matches!(sink, SinkConfig::Depth16(_)));
        Ok(Self {
            publishes_pictures,
            settings,
            rtsp,
            model,
            video,
            down_until: None,
            backoff: Backoff::new(REBUILD_FIRST, REBUILD_MAX, 0.0),
            targets,
            stats,
            drops,
            reported: Drops::default(),
        })
    }

    /// Publishes everything `input` brings until it closes, then finishes the outputs within
    /// `grace` (files get their index written).
    pub fn run(mut self, input: crossbeam_channel::Receiver<Processed>, grace: Duration) {
        for mut processed in input.iter() {
            self.publish(&mut processed);
        }
        if let Some(video) = self.video.take()
            && let Err(error) = video.finish(grace)
        {
            tracing::warn!(pipeline = %self.settings.pipeline, %error, "output did not finish cleanly");
        }
    }

    fn publish(&mut self, processed: &mut Processed) {
        // The model's result comes back from its device here, in this pipeline's thread.
        if let Err(error) = processed.resolve(self.publishes_pictures) {
            self.drops.output.add();
            tracing::error!(pipeline = %self.settings.pipeline, seq = processed.frame.seq, %error, "frame dropped");
            return;
        }
        self.publish_video(processed);
        self.stats
            .latency
            .record(processed.frame.captured.elapsed());
        if !self.targets.is_empty() {
            self.write_metadata(processed);
        }
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
    }

    fn write_metadata(&mut self, processed: &Processed) {
        let total = Drops {
            input: self.drops.input.get(),
            output: self.drops.output.get(),
        };
        let since = Drops {
            input: total.input - self.reported.input,
            output: total.output - self.reported.output,
        };
        self.reported = total;
        let line = metadata::render(&self.settings.pipeline, &self.model, processed, since);
        for target in &mut self.targets {
            if let Err(error) = target.write_line(&line) {
                tracing::error!(pipeline = %self.settings.pipeline, %error, "cannot write metadata");
            }
        }
    }

    fn publish_video(&mut self, processed: &mut Processed) {
        if let Some(until) = self.down_until {
            if Instant::now() < until {
                self.drops.output.add();
                return;
            }
            self.down_until = None;
            match VideoOutput::start(
                &self.settings,
                self.rtsp.as_ref(),
                self.drops.output.clone(),
            ) {
                Ok(video) => {
                    tracing::info!(pipeline = %self.settings.pipeline, "output rebuilt");
                    self.video = video;
                }
                Err(error) => {
                    self.fail(error);
                    return;
                }
            }
        }
        let Some(video) = self.video.as_mut() else {
            return;
        };
        let result = match video.poll_error() {
            Some(error) => Err(error),
            None => video.push(processed),
        };
        match result {
            Ok(()) => self.backoff.reset(),
            Err(error) => {
                self.drops.output.add();
                self.fail(error);
            }
        }
    }

    /// Takes the output down and schedules its rebuild.
    fn fail(&mut self, error: MediaError) {
        if let Some(video) = self.video.take() {
            video.abort();
        }
        self.stats.output_restarts.fetch_add(1, Ordering::Relaxed);
        let delay = self.backoff.fail();
        tracing::error!(
            pipeline = %self.settings.pipeline,
            %error,
            retry_in_s = delay.as_secs(),
            "output failed; rebuilding it (frames meanwhile are counted as output drops)"
        );
        self.down_until = Some(Instant::now() + delay);
    }
}
