//! A pipeline's output thread: publishes each frame to its video output and its metadata
//! targets, and rebuilds a video output that failed (a full disk, a sink that errored) with
//! backoff, so one bad moment does not end publishing for the months the daemon runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::backoff::Retry;
use super::metadata::{self, Drops, MetadataTarget};
use super::stats::{Loss, OutputHealth, PipelineStats};
use super::stop::StopSignal;
use crate::config::SinkConfig;
use crate::frames::{DropCounter, HopReceiver, Processed};
use crate::media::MediaError;
use crate::media::output::{OutputCounters, OutputSettings, RecordingMisses, VideoOutput};
use crate::media::rtsp_server::RtspMounts;

/// A pipeline's drop counters, as its metadata lines and metrics report them.
#[derive(Clone)]
pub struct HopDrops {
    /// Between the source and the model (or the output, without a model).
    pub input: Arc<DropCounter>,
    /// After the model (or the source, without one) up to the encoder, whose own bounded
    /// queue counts here too.
    pub output: Arc<DropCounter>,
}

/// The name of the encoded video output (encoder and network sinks) in health reports.
const VIDEO: &str = "video";

/// How a failed output or recording is retried: the first delay and the longest.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

/// One output (the video output, or one recording) as the stage keeps it: its retry count
/// and, while it is down, when it is tried again.
struct Life {
    name: String,
    retry: Retry,
    down_until: Option<Instant>,
}

impl Life {
    fn new(name: String, policy: RetryPolicy) -> Self {
        Self {
            name,
            retry: Retry::new(policy.initial, policy.max),
            down_until: None,
        }
    }

    fn due(&self) -> bool {
        self.down_until.is_some_and(|at| Instant::now() >= at)
    }
}

/// Everything needed to (re)build and feed one pipeline's outputs.
pub struct OutputStage {
    settings: OutputSettings,
    rtsp: Option<RtspMounts>,
    /// The model's name in metadata lines (`none` without one).
    model: String,
    video: Option<VideoOutput>,
    life: Life,
    /// One per `file` sink of the video output, in sink order.
    recordings: Vec<Life>,
    targets: Vec<MetadataTarget>,
    stats: Arc<PipelineStats>,
    drops: HopDrops,
    reported: Drops,
    /// Some sink shows the picture (`depth16` sinks take only the raw depth).
    publishes_pictures: bool,
    /// The pipeline's stop: once its drain is abandoned, nothing waits for room any more.
    stop: StopSignal,
    /// What every life of the video output counts its drops in.
    counters: OutputCounters,
    /// The frames the current video output's recordings missed, and how many of them are
    /// already counted as lost.
    misses: Option<(RecordingMisses, u64)>,
}

impl OutputStage {
    /// Builds and starts the video output (a failure here fails the pipeline's build); a
    /// recording that cannot start is only down, and retried.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        settings: OutputSettings,
        rtsp: Option<RtspMounts>,
        model: String,
        targets: Vec<MetadataTarget>,
        stats: Arc<PipelineStats>,
        drops: HopDrops,
        policy: RetryPolicy,
        stop: StopSignal,
    ) -> Result<Self, MediaError> {
        let counters = OutputCounters {
            encoder_queue: drops.output.clone(),
            rtsp_media: stats.rtsp_dropped.clone(),
        };
        let video = VideoOutput::start(&settings, rtsp.as_ref(), &counters)?;
        let recordings = video.as_ref().map_or(Vec::new(), |video| {
            (0..video.recording_count())
                .map(|index| Life::new(video.recording_name(index), policy))
                .collect()
        });
        let publishes_pictures = SinkConfig::any_shows_pictures(&settings.sinks);
        let mut stage = Self {
            publishes_pictures,
            settings,
            rtsp,
            model,
            video,
            life: Life::new(VIDEO.to_string(), policy),
            recordings,
            targets,
            stats,
            drops,
            reported: Drops::default(),
            stop,
            counters,
            misses: None,
        };
        stage.misses = stage.video.as_ref().map(|v| (v.recording_misses(), 0));
        if let Some(video) = &stage.video {
            video.watch_snapshot(&stage.stats.latest_frame);
            stage.stats.live.attach(video.pipeline());
            stage.life.retry.up();
            stage.report(None);
            stage.start_recordings(false);
        }
        Ok(stage)
    }

    /// Publishes everything `input` brings until it closes, then finishes the outputs within
    /// `grace` (files get their index written; files without frames are removed).
    pub fn run(mut self, input: HopReceiver<Processed>, grace: Duration) {
        for mut processed in input.iter() {
            if self.stop.abandoned() {
                // Past the drain's grace period: what still comes is let go, counted, so the
                // stages before this one are never left waiting on it.
                self.lose(Loss::Abandoned);
                continue;
            }
            self.publish(&mut processed);
        }
        if let Some(video) = self.video.take()
            && let Err(error) = video.finish(grace)
        {
            tracing::warn!(pipeline = %self.settings.pipeline, %error, "output did not finish cleanly");
        }
        self.count_misses();
    }

    /// Counts the frames the recordings missed since the last call as lost.
    fn count_misses(&mut self) {
        if let Some((misses, counted)) = &mut self.misses {
            let now = misses.count();
            self.stats
                .lose(Loss::RecordingMissed, now.saturating_sub(*counted));
            *counted = now;
        }
    }

    /// Takes `video` as the output's new life.
    fn adopt(&mut self, video: Option<VideoOutput>) {
        self.count_misses();
        self.misses = video.as_ref().map(|v| (v.recording_misses(), 0));
        self.video = video;
    }

    /// Publishes one frame. It counts as out once its picture is handed to the encoder (or,
    /// for a pipeline without video, once its metadata line is written); a frame the output
    /// could not take is counted as dropped and lost, with why.
    fn publish(&mut self, processed: &mut Processed) {
        // The model's result comes back from its device here, in this pipeline's thread.
        if let Err(error) = processed.resolve(self.publishes_pictures) {
            self.lose(Loss::CopyBackFailed);
            tracing::error!(pipeline = %self.settings.pipeline, seq = processed.frame.seq, %error, "frame dropped");
            return;
        }
        let video = !self.settings.has_video() || self.publish_video(processed);
        let metadata = self.targets.is_empty() || self.write_metadata(processed);
        let out = if self.settings.has_video() {
            video
        } else {
            metadata
        };
        if out {
            self.stats
                .latency
                .record(processed.frame.captured.elapsed());
            self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A frame that goes no further: dropped at the output, and lost for `loss`.
    fn lose(&self, loss: Loss) {
        self.drops.output.add();
        self.stats.lose(loss, 1);
    }

    /// Writes the frame's metadata line to every target; false when one could not take it.
    fn write_metadata(&mut self, processed: &Processed) -> bool {
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
        let mut written = true;
        for target in &mut self.targets {
            if let Err(error) = target.write(&line, processed.results.as_ref()) {
                written = false;
                tracing::error!(pipeline = %self.settings.pipeline, %error, "cannot write metadata");
            }
        }
        if !written && self.settings.has_video() {
            // The frame itself went out; only its line is missing.
            self.stats.lose(Loss::MetadataFailed, 1);
        } else if !written {
            self.lose(Loss::MetadataFailed);
        }
        written
    }

    /// Hands the frame's picture to the encoder; false when the output could not take it
    /// (it is down, or failed on it), the frame then counted as dropped and lost.
    fn publish_video(&mut self, processed: &mut Processed) -> bool {
        if self.life.down_until.is_some() {
            if !self.life.due() {
                self.lose(Loss::OutputFailed);
                return false;
            }
            self.life.down_until = None;
            match VideoOutput::start(&self.settings, self.rtsp.as_ref(), &self.counters) {
                Ok(video) => {
                    tracing::info!(pipeline = %self.settings.pipeline, "output rebuilt");
                    if let Some(video) = &video {
                        video.watch_snapshot(&self.stats.latest_frame);
                        self.stats.live.attach(video.pipeline());
                    }
                    self.adopt(video);
                    self.life.retry.up();
                    self.report(None);
                    self.start_recordings(false);
                }
                Err(error) => {
                    self.lose(Loss::OutputFailed);
                    self.fail(error);
                    return false;
                }
            }
        }
        self.tend_recordings();
        let Some(video) = self.video.as_mut() else {
            self.lose(Loss::OutputFailed);
            return false;
        };
        let stop = self.stop.clone();
        let result = match video.poll_error() {
            Some(error) => Err(error),
            None => video.push(processed, &|| stop.abandoned()),
        };
        match result {
            Ok(true) => true,
            Ok(false) => {
                self.lose(Loss::Abandoned);
                false
            }
            Err(error) => {
                self.lose(Loss::OutputFailed);
                self.fail(error);
                false
            }
        }
    }

    /// Takes the output down and schedules its rebuild.
    fn fail(&mut self, error: MediaError) {
        if let Some(video) = self.video.take() {
            video.abort();
        }
        self.stats.output_restarts.fetch_add(1, Ordering::Relaxed);
        self.stats.count_output_failure(error.reason());
        let delay = self.life.retry.fail();
        tracing::error!(
            pipeline = %self.settings.pipeline,
            %error,
            reason = error.reason(),
            failures = self.life.retry.failures(),
            retry_in_ms = delay.as_millis() as u64,
            "output failed; rebuilding it (frames meanwhile are counted as output drops)"
        );
        self.life.down_until = Some(Instant::now() + delay);
        self.report(Some(&error));
        for index in 0..self.recordings.len() {
            self.report_recording(index, Some(&error));
        }
    }

    /// Takes down the recordings that failed and restarts those whose wait is over.
    fn tend_recordings(&mut self) {
        self.count_misses();
        let Some(video) = self.video.as_mut() else {
            return;
        };
        for (index, error) in video.poll_recordings() {
            self.fail_recording(index, error);
        }
        self.start_recordings(true);
    }

    /// Starts every recording that is due (`only_due`), or all of them (a new video output).
    fn start_recordings(&mut self, only_due: bool) {
        for index in 0..self.recordings.len() {
            let life = &mut self.recordings[index];
            if only_due && !life.due() {
                continue;
            }
            life.down_until = None;
            let Some(video) = self.video.as_mut() else {
                return;
            };
            match video.start_recording(index, &self.stats.segments_deleted) {
                Ok(()) => {
                    self.recordings[index].retry.up();
                    self.report_recording(index, None);
                }
                Err(error) => self.fail_recording(index, error),
            }
        }
    }

    fn fail_recording(&mut self, index: usize, error: MediaError) {
        self.stats.output_restarts.fetch_add(1, Ordering::Relaxed);
        self.stats.count_output_failure(error.reason());
        let life = &mut self.recordings[index];
        let delay = life.retry.fail();
        life.down_until = Some(Instant::now() + delay);
        tracing::error!(
            pipeline = %self.settings.pipeline,
            output = %life.name,
            %error,
            reason = error.reason(),
            failures = life.retry.failures(),
            retry_in_ms = delay.as_millis() as u64,
            "recording failed; the other outputs and the metadata go on, and it is retried"
        );
        self.report_recording(index, Some(&error));
    }

    /// Publishes the video output's health (`error`: why it is down).
    fn report(&self, error: Option<&MediaError>) {
        self.stats
            .set_output(health(&self.life, self.video.is_some(), error));
    }

    fn report_recording(&self, index: usize, error: Option<&MediaError>) {
        let life = &self.recordings[index];
        let up = self.video.is_some() && life.down_until.is_none();
        self.stats.set_output(health(life, up, error));
    }
}

fn health(life: &Life, up: bool, error: Option<&MediaError>) -> OutputHealth {
    OutputHealth {
        output: life.name.clone(),
        up: up && error.is_none(),
        reason: error.map(|e| e.reason().to_string()),
        error: error.map(ToString::to_string),
        failures: life.retry.failures(),
        retry_at: life.down_until,
    }
}
