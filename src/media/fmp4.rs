//! Fragmented MP4 (ISO/IEC 14496-12) for one H.264 track, as Media Source Extensions take it:
//! an init segment (`ftyp` + `moov`) that describes the track, then one `moof` + `mdat`
//! fragment per access unit, so a browser can show each frame as soon as the encoder has made
//! it. The boxes are written from the standard's definitions; the `avcC` configuration record
//! from ISO/IEC 14496-15.
//!
//! The input is what an encoder followed by `h264parse` produces: Annex-B access units with
//! their parameter sets in-band before each IDR. MP4 wants them the other way round: samples
//! with 4-byte length prefixes, parameter sets in the sample entry. A viewer can only start at
//! an IDR, so nothing comes out before the first one; a change of parameter sets (a new
//! resolution) gives a new init segment, which MSE accepts mid-stream.

use bytes::Bytes;

/// 90 kHz: the RTP/MPEG clock, fine enough for any frame rate and what players expect.
const TIMESCALE: u32 = 90_000;
/// The one track's ID, in `tkhd`, `trex` and every `tfhd`.
const TRACK_ID: u32 = 1;
/// 1/30 s: the duration of a first sample that comes without one.
const DEFAULT_DURATION: u32 = TIMESCALE / 30;
/// The largest access unit taken: far beyond any real frame, and small enough that every box
/// size fits the 32-bit size field.
const MAX_ACCESS_UNIT: usize = 1 << 30;

/// NAL unit types (ITU-T H.264 table 7-1) the muxer treats specially.
const NAL_SLICE: u8 = 1;
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const NAL_FILLER: u8 = 12;

/// `trun` flags: data-offset, then per-sample duration, size, flags and composition offset.
const TRUN_FLAGS: u32 = 0x00_0001 | 0x00_0100 | 0x00_0200 | 0x00_0400 | 0x00_0800;
/// `tfhd` flag default-base-is-moof: data offsets count from the fragment's own `moof`, so a
/// fragment means the same wherever it lands in the viewer's buffer.
const TFHD_DEFAULT_BASE_IS_MOOF: u32 = 0x02_0000;
/// Sample flags of an IDR: sample_depends_on = 2 (depends on no other sample).
const SAMPLE_SYNC: u32 = 0x0200_0000;
/// Sample flags of any other frame: sample_depends_on = 1, sample_is_non_sync_sample.
const SAMPLE_NON_SYNC: u32 = 0x0101_0000;

/// What cannot be muxed. A failed `push` changes nothing but the muxer's wait for a keyframe:
/// the viewer's decoder would need the lost frame, so it is fed again from the next IDR.
#[derive(Debug, thiserror::Error)]
pub enum Fmp4Error {
    #[error("the access unit is empty")]
    Empty,
    #[error("the access unit has no NAL unit, only start codes or zero bytes")]
    NoNalUnits,
    #[error(
        "the access unit is not an H.264 Annex-B byte stream: it does not begin with a start code"
    )]
    NotAnnexB,
    #[error("NAL unit {index} of the access unit has its forbidden_zero_bit set")]
    ForbiddenBit { index: usize },
    #[error("the access unit has no slice: there is no picture in it")]
    NoSlice,
    #[error("the access unit is {0} bytes, more than an MP4 fragment takes here")]
    TooLarge(usize),
    #[error("the SPS cannot be parsed: {0}")]
    Sps(&'static str),
    #[error("a {kind} of {len} bytes is longer than the avcC record can hold (65535)")]
    ParameterSetTooLong { kind: &'static str, len: usize },
    #[error("{count} different {kind}s are more than the avcC record can hold ({max})")]
    TooManyParameterSets {
        kind: &'static str,
        count: usize,
        max: usize,
    },
    #[error("the picture is {width}x{height}, larger than an MP4 sample entry can describe")]
    PictureTooLarge { width: u32, height: u32 },
}

/// Muxes one viewer's H.264 into fragmented MP4. Each viewer gets its own: the first thing a
/// viewer receives must be an init segment and a keyframe, whenever it joins.
#[derive(Debug, Default)]
pub struct Fmp4Muxer {
    /// The parameter sets of the last init segment, and what they describe.
    config: Option<Config>,
    /// An access unit could not be muxed: the frames after it may refer to it, so they are
    /// dropped up to the next IDR (as they are before the first one, while `config` is None).
    lost: bool,
    /// `mfhd` sequence numbers start at 1 and go up by one per fragment.
    sequence: u32,
    timeline: Option<Timeline>,
    skipped: u64,
}

/// The parameter sets an init segment was made of.
#[derive(Debug, Clone)]
struct Config {
    sps: Vec<Vec<u8>>,
    pps: Vec<Vec<u8>>,
    /// From the first SPS.
    info: SpsInfo,
}

/// Where decode times stand: input DTS `base_ns` is decode time `base` (in 90 kHz ticks), and
/// the last sample decoded at `last` for `last_duration`.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    base_ns: u64,
    base: u64,
    last: u64,
    last_duration: u32,
}

/// One sample's times in 90 kHz ticks.
#[derive(Debug, Clone, Copy)]
struct Timing {
    decode: u64,
    duration: u32,
    /// PTS − DTS.
    composition_offset: i32,
}

impl Fmp4Muxer {
    /// A muxer that waits for its first IDR; time is counted in 90 kHz ticks from that IDR's
    /// DTS, so a viewer's timeline starts at 0 whenever it joined.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one AU. Returns the bytes to send, in order: nothing until the first AU that is
    /// an IDR with SPS+PPS (earlier ones cannot be decoded, so they are skipped and counted),
    /// then for that AU the init segment (ftyp+moov) followed by its fragment (moof+mdat);
    /// later AUs give one fragment each. When the SPS or PPS changes (new resolution), a new
    /// init segment precedes the fragment of the IDR that carries them: only there can a
    /// decoder switch, and MSE reconfigures its decoder on an init segment.
    ///
    /// Timestamps are in nanoseconds; without a DTS the PTS is the decode time (no B-frames),
    /// without a duration the distance from the previous DTS is. Decode times never go back:
    /// a DTS that does (a source reconnected) continues from the previous sample's end, as a
    /// browser drops samples that decode before ones it already has.
    ///
    /// An error leaves the stream as it was, except that the AUs after it are skipped up to
    /// the next IDR, since they may refer to the one that was lost.
    pub fn push(
        &mut self,
        au: &[u8],
        pts_ns: u64,
        dts_ns: Option<u64>,
        duration_ns: Option<u64>,
    ) -> Result<Vec<Bytes>, Fmp4Error> {
        let pushed = self.mux(au, pts_ns, dts_ns, duration_ns);
        if pushed.is_err() {
            self.lost = true;
        }
        pushed
    }

    /// The RFC 6381 codec string for MSE's `isTypeSupported`/`addSourceBuffer`, e.g.
    /// "avc1.64001f", from the SPS of the last init segment (the one the viewer's source
    /// buffer decodes with); None before the first.
    pub fn codec(&self) -> Option<String> {
        self.config.as_ref().map(|config| config.info.codec())
    }

    /// Width and height of the picture, as the SPS of the last init segment gives them (after
    /// its cropping, so odd sizes come out as encoded); None before the first.
    pub fn dimensions(&self) -> Option<(u32, u32)> {
        self.config
            .as_ref()
            .map(|config| (config.info.width, config.info.height))
    }

    /// AUs skipped while waiting for a keyframe: before the first IDR, and after an AU that
    /// could not be muxed. A viewer that joins mid-GOP loses this many frames.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// `push`, changing the muxer only once everything it returns has been made.
    fn mux(
        &mut self,
        au: &[u8],
        pts_ns: u64,
        dts_ns: Option<u64>,
        duration_ns: Option<u64>,
    ) -> Result<Vec<Bytes>, Fmp4Error> {
        if au.len() > MAX_ACCESS_UNIT {
            return Err(Fmp4Error::TooLarge(au.len()));
        }
        let nals = split_annex_b(au)?;
        let mut sps = Vec::new();
        let mut pps = Vec::new();
        let mut has_slice = false;
        let mut idr = false;
        for (index, &nal) in nals.iter().enumerate() {
            let header = nal.first().copied().unwrap_or(0);
            if header & 0x80 != 0 {
                return Err(Fmp4Error::ForbiddenBit { index });
            }
            match header & 0x1f {
                NAL_SPS => push_unique(&mut sps, nal),
                NAL_PPS => push_unique(&mut pps, nal),
                NAL_IDR => {
                    has_slice = true;
                    idr = true;
                }
                t if (NAL_SLICE..NAL_IDR).contains(&t) => has_slice = true,
                _ => {}
            }
        }
        if !has_slice {
            return Err(Fmp4Error::NoSlice);
        }
        let startable = idr && (self.config.is_some() || (!sps.is_empty() && !pps.is_empty()));
        let waiting = self.config.is_none() || self.lost;
        if waiting && !startable {
            self.skipped += 1;
            return Ok(Vec::new());
        }

        // Parameter sets are only taken at an IDR, where a decoder can switch to them; an IDR
        // that repeats the current ones (every IDR, with config-interval=-1) changes nothing.
        let mut new_config = None;
        if idr {
            let current = self.config.as_ref();
            let sps = if sps.is_empty() {
                current.map(|c| c.sps.clone()).unwrap_or_default()
            } else {
                sps.iter().map(|nal| nal.to_vec()).collect()
            };
            let pps = if pps.is_empty() {
                current.map(|c| c.pps.clone()).unwrap_or_default()
            } else {
                pps.iter().map(|nal| nal.to_vec()).collect()
            };
            if current.is_none_or(|c| c.sps != sps || c.pps != pps) {
                new_config = Some(Config::new(sps, pps)?);
            }
        }

        let sample = avcc_sample(&nals);
        let (timing, timeline) = self.place(pts_ns, dts_ns, duration_ns);
        let sequence = self.sequence.wrapping_add(1).max(1);
        let mut out = Vec::with_capacity(2);
        if let Some(config) = &new_config {
            out.push(Bytes::from(init_segment(config)));
        }
        out.push(Bytes::from(fragment(sequence, timing, idr, &sample)));

        if let Some(config) = new_config {
            self.config = Some(config);
        }
        self.sequence = sequence;
        self.timeline = Some(timeline);
        self.lost = false;
        Ok(out)
    }

    /// Where a sample with these input times goes on the output's decode timeline, and the
    /// timeline after it.
    fn place(
        &self,
        pts_ns: u64,
        dts_ns: Option<u64>,
        duration_ns: Option<u64>,
    ) -> (Timing, Timeline) {
        let dts_ns = dts_ns.unwrap_or(pts_ns);
        let (mut timeline, decode) = match self.timeline {
            None => (
                Timeline {
                    base_ns: dts_ns,
                    base: 0,
                    last: 0,
                    last_duration: 0,
                },
                0,
            ),
            Some(timeline) => {
                let decode = dts_ns
                    .checked_sub(timeline.base_ns)
                    .map(|since| timeline.base.saturating_add(ns_to_ticks(since)));
                match decode {
                    Some(decode) if decode > timeline.last => (timeline, decode),
                    // Back in time, or not moving: two samples cannot decode at once, and a
                    // browser would drop the later one. Continue where the last one ended,
                    // and follow the new timestamps from there.
                    _ => {
                        let decode = timeline
                            .last
                            .saturating_add(u64::from(timeline.last_duration.max(1)));
                        let rebased = Timeline {
                            base_ns: dts_ns,
                            base: decode,
                            ..timeline
                        };
                        (rebased, decode)
                    }
                }
            }
        };
        let given = duration_ns
            .map(ns_to_ticks)
            .filter(|&ticks| ticks > 0)
            .map(|ticks| u32::try_from(ticks).unwrap_or(u32::MAX));
        let duration = given.unwrap_or_else(|| match self.timeline {
            Some(previous) => u32::try_from(decode.saturating_sub(previous.last))
                .unwrap_or(u32::MAX)
                .max(1),
            None => DEFAULT_DURATION,
        });
        let offset_ns = i128::from(pts_ns) - i128::from(dts_ns);
        let offset = offset_ns * i128::from(TIMESCALE);
        // Rounded to the nearest tick, like the decode times, so PTS − DTS stays what it was.
        let half = if offset < 0 {
            -500_000_000
        } else {
            500_000_000
        };
        let composition_offset = ((offset + half) / 1_000_000_000)
            .clamp(i128::from(i32::MIN), i128::from(i32::MAX))
            as i32;
        timeline.last = decode;
        timeline.last_duration = duration;
        (
            Timing {
                decode,
                duration,
                composition_offset,
            },
            timeline,
        )
    }
}

/// Nanoseconds to 90 kHz ticks, rounded: 1/30 s is 3000 ticks, not 2999.
fn ns_to_ticks(ns: u64) -> u64 {
    let ticks = (u128::from(ns) * u128::from(TIMESCALE) + 500_000_000) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

fn push_unique<'a>(sets: &mut Vec<&'a [u8]>, nal: &'a [u8]) {
    if !sets.contains(&nal) {
        sets.push(nal);
    }
}

/// The NAL units of an Annex-B access unit, without start codes and trailing zero bytes.
fn split_annex_b(au: &[u8]) -> Result<Vec<&[u8]>, Fmp4Error> {
    if au.is_empty() {
        return Err(Fmp4Error::Empty);
    }
    // Where each NAL unit starts: just after a 00 00 01 (a 00 00 00 01 ends the same way).
    let starts: Vec<usize> = au
        .windows(3)
        .enumerate()
        .filter(|(_, window)| *window == [0, 0, 1])
        .map(|(at, _)| at + 3)
        .collect();
    let Some(&first) = starts.first() else {
        return Err(if au.iter().all(|&b| b == 0) {
            Fmp4Error::NoNalUnits
        } else {
            Fmp4Error::NotAnnexB
        });
    };
    let leading = au.get(..first.saturating_sub(3)).unwrap_or_default();
    if leading.iter().any(|&b| b != 0) {
        return Err(Fmp4Error::NotAnnexB);
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (i, &start) in starts.iter().enumerate() {
        let end = starts
            .get(i + 1)
            .map_or(au.len(), |next| next.saturating_sub(3));
        let mut nal = au.get(start..end).unwrap_or_default();
        // A NAL unit never ends in a zero byte: those are the byte stream's trailing_zero_8bits
        // or the first byte of a 4-byte start code.
        while let Some((&0, rest)) = nal.split_last() {
            nal = rest;
        }
        if !nal.is_empty() {
            nals.push(nal);
        }
    }
    if nals.is_empty() {
        return Err(Fmp4Error::NoNalUnits);
    }
    Ok(nals)
}

/// The sample: each NAL unit with a 4-byte length, except parameter sets (they are in the
/// sample entry, and `avc1` wants them nowhere else), access unit delimiters (MP4 samples are
/// delimited already) and filler.
fn avcc_sample(nals: &[&[u8]]) -> Vec<u8> {
    let kept = || {
        nals.iter().filter(|nal| {
            let kind = nal.first().map_or(0, |h| h & 0x1f);
            !matches!(kind, NAL_SPS | NAL_PPS | NAL_AUD | NAL_FILLER)
        })
    };
    let mut sample = Vec::with_capacity(kept().map(|nal| nal.len() + 4).sum());
    for nal in kept() {
        // The access unit is at most MAX_ACCESS_UNIT bytes, so each length fits.
        put_u32(&mut sample, nal.len() as u32);
        sample.extend_from_slice(nal);
    }
    sample
}

impl Config {
    fn new(sps: Vec<Vec<u8>>, pps: Vec<Vec<u8>>) -> Result<Self, Fmp4Error> {
        for (kind, sets, max) in [("SPS", &sps, 31), ("PPS", &pps, 255)] {
            if sets.len() > max {
                return Err(Fmp4Error::TooManyParameterSets {
                    kind,
                    count: sets.len(),
                    max,
                });
            }
            if let Some(long) = sets.iter().find(|set| set.len() > usize::from(u16::MAX)) {
                return Err(Fmp4Error::ParameterSetTooLong {
                    kind,
                    len: long.len(),
                });
            }
        }
        let info = SpsInfo::parse(sps.first().ok_or(Fmp4Error::Sps("there is none"))?)
            .map_err(Fmp4Error::Sps)?;
        if pps.is_empty() {
            return Err(Fmp4Error::Sps("there is no PPS to go with it"));
        }
        if info.width > u32::from(u16::MAX) || info.height > u32::from(u16::MAX) {
            return Err(Fmp4Error::PictureTooLarge {
                width: info.width,
                height: info.height,
            });
        }
        Ok(Self { sps, pps, info })
    }

    /// The AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1).
    fn avcc(&self) -> Vec<u8> {
        let info = &self.info;
        let mut record = vec![
            1, // configurationVersion
            info.profile_idc,
            info.constraint_flags,
            info.level_idc,
            0xfc | 3, // lengthSizeMinusOne: 4-byte lengths
            // At most 31 SPS and 255 PPS of at most 65535 bytes (`Config::new`).
            0xe0 | self.sps.len() as u8,
        ];
        for sps in &self.sps {
            put_u16(&mut record, sps.len() as u16);
            record.extend_from_slice(sps);
        }
        record.push(self.pps.len() as u8);
        for pps in &self.pps {
            put_u16(&mut record, pps.len() as u16);
            record.extend_from_slice(pps);
        }
        if matches!(info.profile_idc, 100 | 110 | 122 | 144 | 244) {
            record.push(0xfc | info.chroma_format_idc);
            record.push(0xf8 | info.bit_depth_luma_minus8);
            record.push(0xf8 | info.bit_depth_chroma_minus8);
            record.push(0); // numOfSequenceParameterSetExt
        }
        record
    }
}

/// What the muxer needs from an SPS (ITU-T H.264 7.3.2.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpsInfo {
    profile_idc: u8,
    constraint_flags: u8,
    level_idc: u8,
    chroma_format_idc: u8,
    bit_depth_luma_minus8: u8,
    bit_depth_chroma_minus8: u8,
    width: u32,
    height: u32,
}

impl SpsInfo {
    /// Parses an SPS NAL unit (with its header byte). Every value is checked against its range
    /// in the standard, so that garbage is refused rather than turned into a picture size.
    fn parse(nal: &[u8]) -> Result<Self, &'static str> {
        let rbsp = unescape(nal);
        let Some(&[header, profile_idc, constraint_flags, level_idc]) = rbsp.get(..4) else {
            return Err("it is shorter than 4 bytes");
        };
        if header & 0x1f != NAL_SPS {
            return Err("it is not an SPS NAL unit");
        }
        let mut bits = Bits::new(rbsp.get(4..).unwrap_or_default());
        if bits.ue()? > 31 {
            return Err("seq_parameter_set_id is over 31");
        }
        let mut chroma_format_idc = 1;
        let mut separate_colour_plane = false;
        let mut bit_depth_luma_minus8 = 0;
        let mut bit_depth_chroma_minus8 = 0;
        if matches!(
            profile_idc,
            100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
        ) {
            chroma_format_idc = bits.ue_max(3, "chroma_format_idc is over 3")?;
            if chroma_format_idc == 3 {
                separate_colour_plane = bits.flag()?;
            }
            bit_depth_luma_minus8 = bits.ue_max(6, "bit_depth_luma_minus8 is over 6")?;
            bit_depth_chroma_minus8 = bits.ue_max(6, "bit_depth_chroma_minus8 is over 6")?;
            let _qpprime_y_zero_transform_bypass = bits.flag()?;
            if bits.flag()? {
                let lists = if chroma_format_idc == 3 { 12 } else { 8 };
                for list in 0..lists {
                    if bits.flag()? {
                        bits.skip_scaling_list(if list < 6 { 16 } else { 64 })?;
                    }
                }
            }
        }
        if bits.ue()? > 12 {
            return Err("log2_max_frame_num_minus4 is over 12");
        }
        match bits.ue()? {
            0 => {
                if bits.ue()? > 12 {
                    return Err("log2_max_pic_order_cnt_lsb_minus4 is over 12");
                }
            }
            1 => {
                let _delta_pic_order_always_zero = bits.flag()?;
                bits.se()?; // offset_for_non_ref_pic
                bits.se()?; // offset_for_top_to_bottom_field
                let cycle = bits.ue()?;
                if cycle > 255 {
                    return Err("num_ref_frames_in_pic_order_cnt_cycle is over 255");
                }
                for _ in 0..cycle {
                    bits.se()?; // offset_for_ref_frame
                }
            }
            2 => {}
            _ => return Err("pic_order_cnt_type is over 2"),
        }
        let _max_num_ref_frames = bits.ue()?;
        let _gaps_in_frame_num_allowed = bits.flag()?;
        let width_in_mbs = u64::from(bits.ue()?) + 1;
        let height_in_map_units = u64::from(bits.ue()?) + 1;
        let frame_mbs_only = bits.flag()?;
        if !frame_mbs_only {
            let _mb_adaptive_frame_field = bits.flag()?;
        }
        let _direct_8x8_inference = bits.flag()?;
        let (mut crop_left, mut crop_right, mut crop_top, mut crop_bottom) = (0, 0, 0, 0);
        if bits.flag()? {
            crop_left = u64::from(bits.ue()?);
            crop_right = u64::from(bits.ue()?);
            crop_top = u64::from(bits.ue()?);
            crop_bottom = u64::from(bits.ue()?);
        }
        // VUI and what follows say nothing about the size.

        let field_factor = if frame_mbs_only { 1 } else { 2 };
        // Table 6-1, and 7.4.2.1.1 on frame_crop_*_offset.
        let (crop_unit_x, crop_unit_y) = if separate_colour_plane || chroma_format_idc == 0 {
            (1, field_factor)
        } else {
            let sub_width = if chroma_format_idc == 3 { 1 } else { 2 };
            let sub_height = if chroma_format_idc == 1 { 2 } else { 1 };
            (sub_width, sub_height * field_factor)
        };
        let coded_width = width_in_mbs * 16;
        let coded_height = height_in_map_units * 16 * field_factor;
        // Each term is below 2^33 and the units at most 4, so none of this overflows a u64.
        let crop_x = (crop_left + crop_right) * crop_unit_x;
        let crop_y = (crop_top + crop_bottom) * crop_unit_y;
        if crop_x >= coded_width || crop_y >= coded_height {
            return Err("its cropping leaves no picture");
        }
        let width = u32::try_from(coded_width - crop_x).map_err(|_| "its width is too large")?;
        let height = u32::try_from(coded_height - crop_y).map_err(|_| "its height is too large")?;
        Ok(Self {
            profile_idc,
            constraint_flags,
            level_idc,
            chroma_format_idc,
            bit_depth_luma_minus8,
            bit_depth_chroma_minus8,
            width,
            height,
        })
    }

    /// `avc1.PPCCLL` (RFC 6381 3.3): profile_idc, the constraint flags byte and level_idc.
    fn codec(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile_idc, self.constraint_flags, self.level_idc
        )
    }
}

/// The RBSP of a NAL unit: without the emulation prevention bytes (the 03 of each 00 00 03),
/// which are not part of the values the bits encode.
fn unescape(nal: &[u8]) -> Vec<u8> {
    let mut rbsp = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &byte in nal {
        if zeros >= 2 && byte == 3 {
            zeros = 0;
            continue;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        rbsp.push(byte);
    }
    rbsp
}

/// Reads an RBSP bit by bit, most significant first; running out of bits is an error.
struct Bits<'a> {
    data: &'a [u8],
    position: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, position: 0 }
    }

    fn flag(&mut self) -> Result<bool, &'static str> {
        let byte = self
            .data
            .get(self.position / 8)
            .ok_or("it ends before its last field")?;
        let bit = (byte >> (7 - self.position % 8)) & 1;
        self.position += 1;
        Ok(bit == 1)
    }

    /// ue(v), 9.1: as many leading zeros as the value has bits after its leading 1.
    fn ue(&mut self) -> Result<u32, &'static str> {
        let mut zeros = 0;
        while !self.flag()? {
            zeros += 1;
            if zeros > 31 {
                return Err("an exp-Golomb code is longer than 32 bits");
            }
        }
        let mut suffix: u64 = 0;
        for _ in 0..zeros {
            suffix = (suffix << 1) | u64::from(self.flag()?);
        }
        let value = (1u64 << zeros) - 1 + suffix;
        u32::try_from(value).map_err(|_| "an exp-Golomb code is over 32 bits")
    }

    fn ue_max(&mut self, max: u8, error: &'static str) -> Result<u8, &'static str> {
        u8::try_from(self.ue()?)
            .ok()
            .filter(|&value| value <= max)
            .ok_or(error)
    }

    /// se(v), 9.1.1: 1, −1, 2, −2, … in the order of the ue(v) values 1, 2, 3, 4, …
    fn se(&mut self) -> Result<i64, &'static str> {
        let code = i64::from(self.ue()?);
        Ok(if code % 2 == 1 {
            (code + 1) / 2
        } else {
            -(code / 2)
        })
    }

    /// scaling_list(), 7.3.2.1.1.1: read only to get past it.
    fn skip_scaling_list(&mut self, size: usize) -> Result<(), &'static str> {
        let mut last_scale: i64 = 8;
        let mut next_scale: i64 = 8;
        for _ in 0..size {
            if next_scale != 0 {
                let delta_scale = self.se()?;
                if !(-128..=127).contains(&delta_scale) {
                    return Err("a delta_scale is outside -128..127");
                }
                next_scale = (last_scale + delta_scale).rem_euclid(256);
            }
            if next_scale != 0 {
                last_scale = next_scale;
            }
        }
        Ok(())
    }
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Writes a box: its size (filled in once `body` has written its contents) and type.
fn mp4_box(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    put_u32(out, 0);
    out.extend_from_slice(kind);
    body(out);
    // Access units are at most MAX_ACCESS_UNIT bytes and parameter sets bounded, so every
    // box is well below 4 GiB.
    let size = (out.len() - start) as u32;
    if let Some(slot) = out.get_mut(start..start + 4) {
        slot.copy_from_slice(&size.to_be_bytes());
    }
}

/// Writes a full box: a box whose contents begin with a version and 24 bits of flags.
fn full_box(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    mp4_box(out, kind, |out| {
        put_u32(out, (u32::from(version) << 24) | (flags & 0x00ff_ffff));
        body(out);
    });
}

/// The unity matrix of `mvhd` and `tkhd`: no rotation, no scaling.
fn put_matrix(out: &mut Vec<u8>) {
    for value in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        put_u32(out, value);
    }
}

/// `ftyp` + `moov`: a movie with one H.264 track and no samples of its own (they all come in
/// fragments, which `mvex` announces).
fn init_segment(config: &Config) -> Vec<u8> {
    let (width, height) = (config.info.width, config.info.height);
    let mut out = Vec::with_capacity(1024);
    mp4_box(&mut out, b"ftyp", |out| {
        out.extend_from_slice(b"iso5");
        put_u32(out, 0); // minor_version
        for brand in [b"iso5", b"iso6", b"mp41", b"avc1"] {
            out.extend_from_slice(brand);
        }
    });
    mp4_box(&mut out, b"moov", |out| {
        full_box(out, b"mvhd", 0, 0, |out| {
            put_u32(out, 0); // creation_time
            put_u32(out, 0); // modification_time
            put_u32(out, TIMESCALE);
            put_u32(out, 0); // duration: unknown, the stream is live
            put_u32(out, 0x0001_0000); // rate 1.0
            put_u16(out, 0x0100); // volume 1.0
            out.extend_from_slice(&[0; 10]); // reserved
            put_matrix(out);
            out.extend_from_slice(&[0; 24]); // pre_defined
            put_u32(out, TRACK_ID + 1); // next_track_ID
        });
        mp4_box(out, b"trak", |out| {
            // Flags 3: track_enabled | track_in_movie.
            full_box(out, b"tkhd", 0, 3, |out| {
                put_u32(out, 0); // creation_time
                put_u32(out, 0); // modification_time
                put_u32(out, TRACK_ID);
                put_u32(out, 0); // reserved
                put_u32(out, 0); // duration
                out.extend_from_slice(&[0; 8]); // reserved
                put_u16(out, 0); // layer
                put_u16(out, 0); // alternate_group
                put_u16(out, 0); // volume: not an audio track
                put_u16(out, 0); // reserved
                put_matrix(out);
                // 16.16 fixed point; `Config::new` keeps both below 65536.
                put_u32(out, width << 16);
                put_u32(out, height << 16);
            });
            mp4_box(out, b"mdia", |out| {
                full_box(out, b"mdhd", 0, 0, |out| {
                    put_u32(out, 0); // creation_time
                    put_u32(out, 0); // modification_time
                    put_u32(out, TIMESCALE);
                    put_u32(out, 0); // duration
                    // Language "und", three 5-bit letters offset by 0x60.
                    put_u16(out, (21 << 10) | (14 << 5) | 4);
                    put_u16(out, 0); // pre_defined
                });
                full_box(out, b"hdlr", 0, 0, |out| {
                    put_u32(out, 0); // pre_defined
                    out.extend_from_slice(b"vide");
                    out.extend_from_slice(&[0; 12]); // reserved
                    out.extend_from_slice(b"visiond video\0");
                });
                mp4_box(out, b"minf", |out| {
                    // Flags 1, as the standard requires of vmhd.
                    full_box(out, b"vmhd", 0, 1, |out| {
                        put_u16(out, 0); // graphicsmode: copy
                        out.extend_from_slice(&[0; 6]); // opcolor
                    });
                    mp4_box(out, b"dinf", |out| {
                        full_box(out, b"dref", 0, 0, |out| {
                            put_u32(out, 1); // entry_count
                            // Flags 1: the media data is in this file.
                            full_box(out, b"url ", 0, 1, |_| {});
                        });
                    });
                    mp4_box(out, b"stbl", |out| {
                        full_box(out, b"stsd", 0, 0, |out| {
                            put_u32(out, 1); // entry_count
                            avc1(out, config);
                        });
                        full_box(out, b"stts", 0, 0, |out| put_u32(out, 0));
                        full_box(out, b"stsc", 0, 0, |out| put_u32(out, 0));
                        full_box(out, b"stsz", 0, 0, |out| {
                            put_u32(out, 0); // sample_size
                            put_u32(out, 0); // sample_count
                        });
                        full_box(out, b"stco", 0, 0, |out| put_u32(out, 0));
                    });
                });
            });
        });
        mp4_box(out, b"mvex", |out| {
            full_box(out, b"trex", 0, 0, |out| {
                put_u32(out, TRACK_ID);
                put_u32(out, 1); // default_sample_description_index
                put_u32(out, 0); // default_sample_duration
                put_u32(out, 0); // default_sample_size
                put_u32(out, 0); // default_sample_flags
            });
        });
    });
    out
}

/// The `avc1` VisualSampleEntry with its `avcC`.
fn avc1(out: &mut Vec<u8>, config: &Config) {
    mp4_box(out, b"avc1", |out| {
        out.extend_from_slice(&[0; 6]); // reserved
        put_u16(out, 1); // data_reference_index
        put_u16(out, 0); // pre_defined
        put_u16(out, 0); // reserved
        out.extend_from_slice(&[0; 12]); // pre_defined
        // Below 65536 (`Config::new`).
        put_u16(out, config.info.width as u16);
        put_u16(out, config.info.height as u16);
        put_u32(out, 0x0048_0000); // horizresolution: 72 dpi
        put_u32(out, 0x0048_0000); // vertresolution
        put_u32(out, 0); // reserved
        put_u16(out, 1); // frame_count
        out.extend_from_slice(&[0; 32]); // compressorname: empty
        put_u16(out, 0x0018); // depth
        put_u16(out, 0xffff); // pre_defined: -1
        mp4_box(out, b"avcC", |out| out.extend_from_slice(&config.avcc()));
    });
}

/// `moof` + `mdat` with one sample.
fn fragment(sequence: u32, timing: Timing, keyframe: bool, sample: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sample.len() + 128);
    let mut data_offset_at = None;
    mp4_box(&mut out, b"moof", |out| {
        full_box(out, b"mfhd", 0, 0, |out| put_u32(out, sequence));
        mp4_box(out, b"traf", |out| {
            full_box(out, b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF, |out| {
                put_u32(out, TRACK_ID);
            });
            // Version 1: a 64-bit decode time, which a long-running stream outgrows in 32.
            full_box(out, b"tfdt", 1, 0, |out| put_u64(out, timing.decode));
            // Version 1: signed composition offsets.
            full_box(out, b"trun", 1, TRUN_FLAGS, |out| {
                put_u32(out, 1); // sample_count
                data_offset_at = Some(out.len());
                put_u32(out, 0); // data_offset, once the moof's size is known
                put_u32(out, timing.duration);
                // At most MAX_ACCESS_UNIT bytes.
                put_u32(out, sample.len() as u32);
                put_u32(
                    out,
                    if keyframe {
                        SAMPLE_SYNC
                    } else {
                        SAMPLE_NON_SYNC
                    },
                );
                out.extend_from_slice(&timing.composition_offset.to_be_bytes());
            });
        });
    });
    // From the start of the moof to the sample, just past the mdat's 8-byte header.
    let data_offset = (out.len() + 8) as u32;
    if let Some(slot) = data_offset_at.and_then(|at| out.get_mut(at..at + 4)) {
        slot.copy_from_slice(&data_offset.to_be_bytes());
    }
    mp4_box(&mut out, b"mdat", |out| out.extend_from_slice(sample));
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;
    use std::process::Command;

    use gstreamer as gst;
    use gstreamer::prelude::*;
    use gstreamer_app as gst_app;

    use super::*;

    /// An access unit as the encoder made it.
    #[derive(Debug, Clone)]
    struct Au {
        data: Vec<u8>,
        pts: u64,
        dts: Option<u64>,
        duration: Option<u64>,
    }

    /// `frames` frames of `raw` (a video/x-raw caps string) encoded by x264 as the brief's
    /// live pipelines do: byte-stream, one access unit per buffer, SPS/PPS before each IDR.
    fn encode(raw: &str, frames: u32) -> Vec<Au> {
        encode_with(raw, "", frames)
    }

    /// `encode` with more x264enc properties.
    fn encode_with(raw: &str, x264: &str, frames: u32) -> Vec<Au> {
        gst::init().unwrap();
        let description = format!(
            "videotestsrc num-buffers={frames} ! {raw} ! x264enc tune=zerolatency \
             speed-preset=ultrafast key-int-max=30 sliced-threads=false {x264} ! \
             h264parse config-interval=-1 ! \
             video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
        );
        let pipeline = gst::parse::launch(&description)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let sink = pipeline
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        let mut aus = Vec::new();
        // A timeout rather than `pull_sample`: a pipeline that fails never reaches EOS.
        while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(30)) {
            let buffer = sample.buffer().unwrap();
            let map = buffer.map_readable().unwrap();
            aus.push(Au {
                data: map.to_vec(),
                pts: buffer.pts().unwrap().nseconds(),
                dts: buffer.dts().map(gst::ClockTime::nseconds),
                duration: buffer.duration().map(gst::ClockTime::nseconds),
            });
        }
        let error = pipeline
            .bus()
            .unwrap()
            .pop_filtered(&[gst::MessageType::Error]);
        pipeline.set_state(gst::State::Null).unwrap();
        assert!(error.is_none(), "{error:?}");
        assert_eq!(aus.len(), frames as usize, "{description}");
        aus
    }

    fn nal_types(au: &[u8]) -> Vec<u8> {
        split_annex_b(au)
            .unwrap()
            .iter()
            .map(|nal| nal[0] & 0x1f)
            .collect()
    }

    fn is_idr(au: &Au) -> bool {
        nal_types(&au.data).contains(&NAL_IDR)
    }

    /// The first SPS NAL unit of the stream.
    fn first_sps(aus: &[Au]) -> Vec<u8> {
        aus.iter()
            .flat_map(|au| split_annex_b(&au.data).unwrap())
            .find(|nal| nal[0] & 0x1f == NAL_SPS)
            .unwrap()
            .to_vec()
    }

    /// Everything the muxer returns for `aus`, in order, one entry per `push`.
    fn mux(muxer: &mut Fmp4Muxer, aus: &[Au]) -> Vec<Vec<Bytes>> {
        aus.iter()
            .map(|au| muxer.push(&au.data, au.pts, au.dts, au.duration).unwrap())
            .collect()
    }

    fn write(pushed: &[Vec<Bytes>]) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
        for bytes in pushed.iter().flatten() {
            file.write_all(bytes).unwrap();
        }
        file.flush().unwrap();
        file
    }

    /// ffprobe's view of the first video stream, decoding every frame.
    fn probe(path: &Path) -> serde_json::Value {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args([
                "-show_entries",
                "stream=codec_name,width,height,nb_read_frames",
            ])
            .args(["-of", "json"])
            .arg(path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "ffprobe: {stderr}"
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["streams"][0].clone()
    }

    /// ffprobe's packets: whether each is a keyframe, and its decode and presentation times
    /// in 90 kHz ticks.
    fn packets(path: &Path) -> Vec<(bool, i64, i64)> {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0"])
            .args(["-show_entries", "packet=flags,dts,pts", "-of", "json"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["packets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|packet| {
                (
                    packet["flags"].as_str().unwrap().starts_with('K'),
                    packet["dts"].as_i64().unwrap(),
                    packet["pts"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    /// Decodes the fragments as they come, as a browser would: GStreamer's qtdemux in push
    /// mode takes each new `moov` as a new configuration. Returns each frame's size.
    fn decode_streamed(pushed: &[Vec<Bytes>]) -> Vec<(i32, i32)> {
        gst::init().unwrap();
        let pipeline = gst::parse::launch(
            "appsrc name=src caps=video/quicktime format=bytes ! qtdemux ! h264parse ! \
             avdec_h264 ! appsink name=sink sync=false",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let src = pipeline
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        let sink = pipeline
            .by_name("sink")
            .unwrap()
            .downcast::<gst_app::AppSink>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        for bytes in pushed.iter().flatten() {
            src.push_buffer(gst::Buffer::from_slice(bytes.clone()))
                .unwrap();
        }
        src.end_of_stream().unwrap();
        let mut sizes = Vec::new();
        while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(30)) {
            let caps = sample.caps().unwrap().structure(0).unwrap().to_owned();
            sizes.push((
                caps.get::<i32>("width").unwrap(),
                caps.get::<i32>("height").unwrap(),
            ));
        }
        let error = pipeline
            .bus()
            .unwrap()
            .pop_filtered(&[gst::MessageType::Error]);
        pipeline.set_state(gst::State::Null).unwrap();
        assert!(error.is_none(), "{error:?}");
        sizes
    }

    /// Decodes the whole file with ffmpeg; what it reports at level error must be nothing.
    fn assert_decodes(path: &Path) {
        let out = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(path)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "ffmpeg: {stderr}"
        );
    }

    /// The top-level boxes of `data`, by type.
    fn boxes(mut data: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut found = Vec::new();
        while data.len() >= 8 {
            let size = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
            assert!(size >= 8 && size <= data.len(), "box size {size}");
            found.push((data[4..8].try_into().unwrap(), &data[8..size]));
            data = &data[size..];
        }
        assert!(data.is_empty());
        found
    }

    /// The child boxes of a box found by its path of types, e.g. `[b"moof", b"traf"]`.
    fn child<'a>(data: &'a [u8], path: &[&[u8; 4]]) -> &'a [u8] {
        path.iter().fold(data, |data, kind| {
            boxes(data)
                .into_iter()
                .find(|(found, _)| found == *kind)
                .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(*kind)))
                .1
        })
    }

    /// The AVCDecoderConfigurationRecord in an init segment.
    fn avcc_record(init: &[u8]) -> &[u8] {
        let stsd = child(
            init,
            &[b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"],
        );
        // stsd: version, flags and entry_count; avc1: 78 bytes of VisualSampleEntry.
        let avc1 = child(&stsd[8..], &[b"avc1"]);
        child(&avc1[78..], &[b"avcC"])
    }

    /// A fragment's (decode time, duration, flags, composition offset) from its trun/tfdt.
    fn sample_times(fragment: &[u8]) -> (u64, u32, u32, i32) {
        let traf = child(fragment, &[b"moof", b"traf"]);
        let tfdt = child(traf, &[b"tfdt"]);
        let trun = child(traf, &[b"trun"]);
        let word = |at: usize| u32::from_be_bytes(trun[at..at + 4].try_into().unwrap());
        (
            u64::from_be_bytes(tfdt[4..12].try_into().unwrap()),
            word(12),
            word(20),
            word(24) as i32,
        )
    }

    #[test]
    fn ffmpeg_decodes_every_frame_of_a_live_encoders_stream() {
        let aus = encode("video/x-raw,width=320,height=240,framerate=30/1", 60);
        let mut muxer = Fmp4Muxer::new();
        assert_eq!((muxer.codec(), muxer.dimensions()), (None, None));
        let pushed = mux(&mut muxer, &aus);

        // The init segment, then one fragment per access unit.
        assert_eq!(pushed[0].len(), 2);
        let init: Vec<_> = boxes(&pushed[0][0]).iter().map(|(kind, _)| *kind).collect();
        assert_eq!(init, [*b"ftyp", *b"moov"]);
        for fragment in pushed.iter().skip(1) {
            assert_eq!(fragment.len(), 1);
            let kinds: Vec<_> = boxes(&fragment[0]).iter().map(|(kind, _)| *kind).collect();
            assert_eq!(kinds, [*b"moof", *b"mdat"]);
        }
        // The samples hold no parameter sets or delimiters; they are in avcC.
        let mdat = child(&pushed[0][1], &[b"mdat"]);
        let mut rest = mdat;
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            assert!(![NAL_SPS, NAL_PPS, NAL_AUD].contains(&(rest[4] & 0x1f)));
            rest = &rest[4 + len..];
        }
        assert_eq!(muxer.skipped(), 0);
        assert_eq!(muxer.dimensions(), Some((320, 240)));
        let sps = first_sps(&aus);
        let expected = format!("avc1.{:02x}{:02x}{:02x}", sps[1], sps[2], sps[3]);
        assert_eq!(muxer.codec(), Some(expected));
        // Without a format in the caps, x264enc takes 10-bit 4:4:4 and makes High 4:4:4
        // Predictive (244), whose avcC ends with the chroma format and bit depths.
        let record = avcc_record(&pushed[0][0]);
        assert_eq!(record[..5], [1, sps[1], sps[2], sps[3], 0xff]);
        let info = SpsInfo::parse(&sps).unwrap();
        if matches!(sps[1], 100 | 110 | 122 | 244) {
            assert!(
                record.ends_with(&[
                    0xfc | info.chroma_format_idc,
                    0xf8 | info.bit_depth_luma_minus8,
                    0xf8 | info.bit_depth_chroma_minus8,
                    0
                ]),
                "{record:02x?}"
            );
        }

        let file = write(&pushed);
        let stream = probe(file.path());
        assert_eq!(stream["codec_name"], "h264");
        assert_eq!(
            (stream["width"].as_u64(), stream["height"].as_u64()),
            (Some(320), Some(240))
        );
        assert_eq!(stream["nb_read_frames"], "60");
        assert_decodes(file.path());

        // Keyframes are the IDRs, and times run from 0 at 30 fps.
        let packets = packets(file.path());
        let keyframes: Vec<bool> = aus.iter().map(is_idr).collect();
        assert_eq!(packets.iter().map(|p| p.0).collect::<Vec<_>>(), keyframes);
        assert_eq!(keyframes.iter().filter(|k| **k).count(), 2);
        for (i, (_, dts, pts)) in packets.iter().enumerate() {
            assert_eq!(
                (*dts, *pts),
                (i as i64 * 3000, i as i64 * 3000),
                "packet {i}"
            );
        }
    }

    #[test]
    fn odd_sizes_come_from_the_sps_cropping() {
        // 8-bit 4:2:0, what browsers decode, cropped in 2-pixel units; the 8x8 transform
        // makes x264's ultrafast preset High rather than Constrained Baseline.
        let aus = encode_with(
            "video/x-raw,format=I420,width=322,height=242,framerate=30/1",
            "dct8x8=true",
            5,
        );
        let mut muxer = Fmp4Muxer::new();
        let pushed = mux(&mut muxer, &aus);
        assert_eq!(muxer.dimensions(), Some((322, 242)));
        let sps = first_sps(&aus);
        assert_eq!(sps[1], 100);
        assert_eq!(
            muxer.codec(),
            Some(format!("avc1.64{:02x}{:02x}", sps[2], sps[3]))
        );
        let record = avcc_record(&pushed[0][0]);
        assert!(record.ends_with(&[0xfd, 0xf8, 0xf8, 0]), "{record:02x?}");
        let file = write(&pushed);
        let stream = probe(file.path());
        assert_eq!(
            (stream["width"].as_u64(), stream["height"].as_u64()),
            (Some(322), Some(242))
        );
        assert_eq!(stream["nb_read_frames"], "5");
        assert_decodes(file.path());
    }

    #[test]
    fn high_444_streams_carry_their_chroma_format_and_any_width() {
        // 4:4:4 crops by single pixels, and x264 makes it High 4:4:4 Predictive (244).
        let aus = encode(
            "video/x-raw,format=Y444,width=321,height=241,framerate=30/1",
            5,
        );
        let mut muxer = Fmp4Muxer::new();
        let pushed = mux(&mut muxer, &aus);
        assert_eq!(muxer.dimensions(), Some((321, 241)));
        let sps = first_sps(&aus);
        assert_eq!(sps[1], 244);
        assert_eq!(
            muxer.codec(),
            Some(format!("avc1.f4{:02x}{:02x}", sps[2], sps[3]))
        );
        // 4:4:4, 8-bit.
        let record = avcc_record(&pushed[0][0]);
        assert!(record.ends_with(&[0xff, 0xf8, 0xf8, 0]), "{record:02x?}");
        let file = write(&pushed);
        let stream = probe(file.path());
        assert_eq!(
            (stream["width"].as_u64(), stream["height"].as_u64()),
            (Some(321), Some(241))
        );
        assert_eq!(stream["nb_read_frames"], "5");
        assert_decodes(file.path());
    }

    #[test]
    fn access_units_before_the_first_idr_are_skipped_and_counted() {
        let aus = encode("video/x-raw,width=320,height=240,framerate=30/1", 60);
        // A viewer joining just after the first IDR.
        let joined = &aus[1..];
        let first_idr = joined.iter().position(is_idr).unwrap();
        assert!(first_idr > 0);
        let mut muxer = Fmp4Muxer::new();
        let mut pushed = mux(&mut muxer, &joined[..first_idr]);
        assert!(pushed.iter().all(Vec::is_empty));
        assert_eq!(muxer.skipped(), first_idr as u64);
        assert_eq!((muxer.codec(), muxer.dimensions()), (None, None));
        pushed.extend(mux(&mut muxer, &joined[first_idr..]));
        assert_eq!(muxer.skipped(), first_idr as u64);
        assert_eq!(pushed[first_idr].len(), 2);
        let kinds: Vec<_> = boxes(&pushed[first_idr][0])
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(kinds, [*b"ftyp", *b"moov"]);
        // The viewer's timeline starts at its first IDR.
        assert_eq!(sample_times(&pushed[first_idr][1]).0, 0);

        let file = write(&pushed);
        let stream = probe(file.path());
        let decoded = (joined.len() - first_idr).to_string();
        assert_eq!(stream["nb_read_frames"].as_str(), Some(decoded.as_str()));
        assert_decodes(file.path());
    }

    #[test]
    fn a_new_resolution_gets_a_new_init_segment() {
        let small = encode("video/x-raw,width=320,height=240,framerate=30/1", 30);
        let large = encode("video/x-raw,width=640,height=480,framerate=30/1", 30);
        let mut muxer = Fmp4Muxer::new();
        let first = mux(&mut muxer, &small);
        assert_eq!(muxer.dimensions(), Some((320, 240)));
        // The second encoder's timestamps start again where the first's did.
        let second = mux(&mut muxer, &large);
        assert_eq!(muxer.dimensions(), Some((640, 480)));
        assert_eq!(second[0].len(), 2, "an init segment precedes the new IDR");
        assert!(second[1..].iter().all(|pushed| pushed.len() == 1));

        let all: Vec<Vec<Bytes>> = first.iter().chain(&second).cloned().collect();
        let bytes: Vec<u8> = all.iter().flatten().flat_map(|b| b.to_vec()).collect();
        let moovs = boxes(&bytes)
            .iter()
            .filter(|(kind, _)| kind == b"moov")
            .count();
        assert_eq!(moovs, 2);
        // Decode times go on from the first stream's end, not back to its start.
        let times: Vec<u64> = all
            .iter()
            .map(|pushed| sample_times(pushed.last().unwrap()).0)
            .collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        assert_eq!(times[30], times[29] + 3000);

        // The stream as a browser gets it, through a demuxer that takes a new init segment
        // as a new configuration.
        let sizes = decode_streamed(&all);
        assert_eq!(sizes.len(), 60);
        assert!(
            sizes[..30].iter().all(|&size| size == (320, 240)),
            "{sizes:?}"
        );
        assert!(
            sizes[30..].iter().all(|&size| size == (640, 480)),
            "{sizes:?}"
        );
        // ffmpeg's file demuxer skips a second moov (and would decode the new slices with the
        // old SPS), so each part goes to it as a file of its own.
        for (part, size) in [(&first, (320, 240)), (&second, (640, 480))] {
            let file = write(part);
            let stream = probe(file.path());
            assert_eq!(
                (stream["width"].as_u64(), stream["height"].as_u64()),
                (Some(size.0), Some(size.1))
            );
            assert_eq!(stream["nb_read_frames"], "30");
            assert_decodes(file.path());
        }
    }

    #[test]
    fn decode_times_never_go_back() {
        let aus = encode("video/x-raw,width=320,height=240,framerate=30/1", 8);
        let ms = |ms: u64| ms * 1_000_000;
        let mut muxer = Fmp4Muxer::new();
        // (PTS, DTS, duration) in ms: steady, a DTS going back (a reconnect), then a missing
        // duration and DTS, then a DTS that repeats, and B-frame-like PTS ahead of DTS.
        let stamps = [
            (1000, Some(1000), Some(40)),
            (1040, Some(1040), Some(40)),
            (10, Some(10), Some(40)),
            (50, Some(50), None),
            (100, None, None),
            (100, Some(100), Some(40)),
            (240, Some(140), Some(40)),
            (200, Some(180), Some(40)),
        ];
        let times: Vec<_> = aus
            .iter()
            .zip(stamps)
            .map(|(au, (pts, dts, duration))| {
                let pushed = muxer
                    .push(&au.data, ms(pts), dts.map(ms), duration.map(ms))
                    .unwrap();
                let (decode, duration, _, offset) = sample_times(pushed.last().unwrap());
                (decode, duration, offset)
            })
            .collect();
        assert_eq!(
            times,
            [
                (0, 3600, 0),
                (3600, 3600, 0),
                (7200, 3600, 0),     // back in time: on from the last sample's end
                (10800, 3600, 0),    // no duration: the distance from the last DTS
                (15300, 4500, 0),    // no DTS: the PTS
                (19800, 3600, 0),    // the same DTS again: on from the last sample's end
                (23400, 3600, 9000), // PTS − DTS kept
                (27000, 3600, 1800),
            ]
        );
        let sync: Vec<u32> = aus
            .iter()
            .map(|au| {
                let mut muxer = Fmp4Muxer::new();
                let _ = muxer.push(&aus[0].data, 0, None, None).unwrap();
                let pushed = muxer.push(&au.data, 1, None, None).unwrap();
                sample_times(pushed.last().unwrap()).2
            })
            .collect();
        assert_eq!(sync[0], SAMPLE_SYNC);
        assert!(sync[1..].iter().all(|&flags| flags == SAMPLE_NON_SYNC));
    }

    /// Writes an RBSP field by field, for SPSs that x264 does not make.
    #[derive(Default)]
    struct BitWriter {
        bits: Vec<bool>,
    }

    impl BitWriter {
        fn u(&mut self, n: u32, value: u64) -> &mut Self {
            for i in (0..n).rev() {
                self.bits.push((value >> i) & 1 == 1);
            }
            self
        }

        fn ue(&mut self, value: u64) -> &mut Self {
            let code = value + 1;
            let len = 64 - code.leading_zeros();
            self.u(len - 1, 0).u(len, code)
        }

        fn se(&mut self, value: i64) -> &mut Self {
            let code = if value > 0 { 2 * value - 1 } else { -2 * value };
            self.ue(code as u64)
        }

        /// The NAL unit: header, bytes with emulation prevention, rbsp_trailing_bits.
        fn nal(&mut self, header: u8) -> Vec<u8> {
            self.u(1, 1);
            while !self.bits.len().is_multiple_of(8) {
                self.bits.push(false);
            }
            let rbsp: Vec<u8> = self
                .bits
                .chunks(8)
                .map(|byte| byte.iter().fold(0, |acc, &bit| (acc << 1) | u8::from(bit)))
                .collect();
            let mut nal = vec![header];
            let mut zeros = 0;
            for byte in rbsp {
                if zeros >= 2 && byte <= 3 {
                    nal.push(3);
                    zeros = 0;
                }
                zeros = if byte == 0 { zeros + 1 } else { 0 };
                nal.push(byte);
            }
            nal
        }
    }

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|nal| [&[0, 0, 0, 1][..], nal].concat())
            .collect()
    }

    const PPS: &[u8] = &[0x68, 0xce, 0x38, 0x80];
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x33];
    const P_SLICE: &[u8] = &[0x41, 0x9a, 0x02, 0x04];

    #[test]
    fn high_422_interlaced_sps_with_scaling_lists_and_cropping() {
        // 1920x1080 interlaced High 4:2:2 10-bit, as broadcast encoders make it.
        let mut sps = BitWriter::default();
        sps.u(8, 122).u(8, 0).u(8, 40); // profile, constraints, level
        sps.ue(0); // seq_parameter_set_id
        sps.ue(2).ue(2).ue(2); // chroma_format_idc 4:2:2, 10-bit luma and chroma
        sps.u(1, 0); // qpprime_y_zero_transform_bypass_flag
        sps.u(1, 1); // seq_scaling_matrix_present_flag
        for list in 0..8 {
            let present = matches!(list, 0 | 6);
            sps.u(1, u64::from(present));
            if list == 0 {
                // Ends early: nextScale 0 means the rest repeats the last scale.
                sps.se(8).se(-16);
            } else if list == 6 {
                for j in 0..64 {
                    sps.se(if j % 2 == 0 { 3 } else { -3 });
                }
            }
        }
        sps.ue(0); // log2_max_frame_num_minus4
        sps.ue(1); // pic_order_cnt_type 1
        sps.u(1, 0).se(-1).se(2).ue(2).se(5).se(-5);
        sps.ue(4).u(1, 0); // max_num_ref_frames, gaps
        sps.ue(119); // 120 macroblocks wide
        sps.ue(33); // 34 map units of field pairs: 1088 lines
        sps.u(1, 0).u(1, 1); // frame_mbs_only_flag 0, mb_adaptive_frame_field_flag
        sps.u(1, 1); // direct_8x8_inference_flag
        // Cropping in 2-pixel columns (4:2:2) and 2-line units (fields): 1914x1080.
        sps.u(1, 1).ue(1).ue(2).ue(0).ue(4);
        sps.u(1, 0); // vui_parameters_present_flag
        let sps = sps.nal(0x67);

        let info = SpsInfo::parse(&sps).unwrap();
        assert_eq!((info.width, info.height), (1914, 1080));
        assert_eq!((info.chroma_format_idc, info.bit_depth_luma_minus8), (2, 2));

        let mut muxer = Fmp4Muxer::new();
        let pushed = muxer
            .push(&annex_b(&[&sps, PPS, IDR]), 0, None, None)
            .unwrap();
        assert_eq!(muxer.codec().as_deref(), Some("avc1.7a0028"));
        assert_eq!(muxer.dimensions(), Some((1914, 1080)));
        let init = &pushed[0];
        let record = avcc_record(init);
        let mut expected = vec![1, 122, 0, 40, 0xff, 0xe1];
        expected.extend((sps.len() as u16).to_be_bytes());
        expected.extend(&sps);
        expected.extend([1, 0, PPS.len() as u8]);
        expected.extend(PPS);
        expected.extend([0xfe, 0xfa, 0xfa, 0]);
        assert_eq!(record, expected);
        // tkhd's 16.16 size.
        let tkhd = child(init, &[b"moov", b"trak", b"tkhd"]);
        assert_eq!(
            &tkhd[tkhd.len() - 8..],
            [0x07, 0x7a, 0, 0, 0x04, 0x38, 0, 0]
        );
    }

    #[test]
    fn baseline_sps_needs_no_chroma_fields_in_avcc() {
        let mut sps = BitWriter::default();
        sps.u(8, 66).u(8, 0xc0).u(8, 30).ue(0); // Constrained Baseline 3.0
        sps.ue(0).ue(2).ue(1).u(1, 0); // frame_num, POC type 2, one reference
        sps.ue(39).ue(29).u(1, 1).u(1, 1).u(1, 0).u(1, 0); // 640x480 progressive
        let sps = sps.nal(0x67);
        let mut muxer = Fmp4Muxer::new();
        let pushed = muxer
            .push(&annex_b(&[&sps, PPS, IDR]), 0, None, None)
            .unwrap();
        assert_eq!(muxer.codec().as_deref(), Some("avc1.42c01e"));
        assert_eq!(muxer.dimensions(), Some((640, 480)));
        let record = avcc_record(&pushed[0]);
        assert_eq!(record[..6], [1, 66, 0xc0, 30, 0xff, 0xe1]);
        assert!(
            record.ends_with(PPS),
            "nothing after the PPS: {record:02x?}"
        );
    }

    #[test]
    fn emulation_prevention_bytes_are_not_read_as_sps_bits() {
        assert_eq!(
            unescape(&[0x67, 0, 0, 3, 1, 0, 0, 3, 0, 0, 3]),
            [0x67, 0, 0, 1, 0, 0, 0, 0]
        );
        // A 1920x1080 SPS whose POC cycle offsets are long runs of zero bits: its bytes need
        // emulation prevention before the size fields.
        let mut sps = BitWriter::default();
        sps.u(8, 66).u(8, 0).u(8, 40).ue(0).ue(0); // profile, level, id, frame_num
        sps.ue(1).u(1, 0).se(0).se(0).ue(2).se(1 << 20).se(1 << 20); // POC type 1
        sps.ue(1).u(1, 0); // one reference frame, no gaps
        sps.ue(119).ue(67).u(1, 1).u(1, 1); // 1920x1088, progressive
        sps.u(1, 1).ue(0).ue(0).ue(0).ue(4).u(1, 0); // cropped to 1080 lines
        let nal = sps.nal(0x67);
        assert!(nal.windows(4).any(|w| w == [0, 0, 3, 0]), "{nal:02x?}");
        let info = SpsInfo::parse(&nal).unwrap();
        assert_eq!((info.width, info.height), (1920, 1080));
    }

    #[test]
    fn garbage_is_refused_or_skipped_without_panicking() {
        let mut muxer = Fmp4Muxer::new();
        assert!(matches!(
            muxer.push(&[], 0, None, None),
            Err(Fmp4Error::Empty)
        ));
        for truncated in [&[0][..], &[0, 0], &[0, 0, 1], &[0, 0, 0, 1], &[0, 0, 0, 0]] {
            assert!(
                matches!(
                    muxer.push(truncated, 0, None, None),
                    Err(Fmp4Error::NoNalUnits)
                ),
                "{truncated:?}"
            );
        }
        assert!(matches!(
            muxer.push(&[0x65, 0, 0, 1, 0x65], 0, None, None),
            Err(Fmp4Error::NotAnnexB)
        ));
        assert!(matches!(
            muxer.push(&annex_b(&[&[0xe5, 1]]), 0, None, None),
            Err(Fmp4Error::ForbiddenBit { index: 0 })
        ));
        assert!(matches!(
            muxer.push(&annex_b(&[&[0x09, 0xf0], PPS]), 0, None, None),
            Err(Fmp4Error::NoSlice)
        ));
        // An SPS of 2 bytes, and every truncation of a real one.
        assert!(matches!(
            muxer.push(&annex_b(&[&[0x67, 0x64], PPS, IDR]), 0, None, None),
            Err(Fmp4Error::Sps(_))
        ));
        let aus = encode("video/x-raw,width=320,height=240,framerate=30/1", 2);
        let sps = first_sps(&aus);
        for len in 1..sps.len() {
            let au = annex_b(&[&sps[..len], PPS, IDR]);
            // The last bytes may be VUI, which is not read: then the size is still there.
            match muxer.push(&au, 0, None, None) {
                Err(Fmp4Error::Sps(_)) | Err(Fmp4Error::ForbiddenBit { .. }) => {}
                Ok(pushed) => {
                    assert_eq!(muxer.dimensions(), Some((320, 240)), "{len}");
                    assert!(!pushed.is_empty());
                    muxer = Fmp4Muxer::new();
                }
                Err(other) => panic!("{len}: {other}"),
            }
        }
        // Nothing before a keyframe counts as started.
        assert_eq!(muxer.codec(), None);
        assert!(
            muxer
                .push(&annex_b(&[P_SLICE]), 0, None, None)
                .unwrap()
                .is_empty()
        );
        assert_eq!(muxer.skipped(), 1);

        // Random bytes, with and without start codes and plausible NAL headers, before the
        // stream starts and once it has; every truncation of real access units too.
        let mut rng = fastrand::Rng::with_seed(6381);
        let mut started = Fmp4Muxer::new();
        started.push(&aus[0].data, 0, None, None).unwrap();
        for round in 0..5000 {
            let len = rng.usize(0..200);
            let mut data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if round % 2 == 0 {
                for _ in 0..rng.usize(0..4) {
                    let at = rng.usize(0..=data.len());
                    let header = [0x67, 0x68, 0x65, 0x41, 0x06, 0x09][rng.usize(0..6)];
                    data.splice(at..at, [0, 0, 1, header]);
                }
            }
            let pts = rng.u64(..);
            let dts = rng.bool().then(|| rng.u64(..));
            let duration = rng.bool().then(|| rng.u64(..));
            for muxer in [&mut muxer, &mut started] {
                if let Ok(pushed) = muxer.push(&data, pts, dts, duration) {
                    for bytes in &pushed {
                        boxes(bytes);
                    }
                }
            }
        }
        for au in &aus {
            for len in 0..au.data.len().min(400) {
                let _ = Fmp4Muxer::new().push(&au.data[..len], 0, None, None);
                let _ = started.push(&au.data[..len], u64::MAX, Some(0), Some(u64::MAX));
            }
        }
    }

    #[test]
    fn an_error_waits_for_the_next_idr() {
        let aus = encode("video/x-raw,width=320,height=240,framerate=30/1", 3);
        assert!(is_idr(&aus[0]) && !is_idr(&aus[1]));
        let mut muxer = Fmp4Muxer::new();
        muxer.push(&aus[0].data, 0, None, None).unwrap();
        assert!(muxer.push(&[1, 2, 3], 1, None, None).is_err());
        // The frame after the lost one would refer to it.
        assert!(muxer.push(&aus[2].data, 2, None, None).unwrap().is_empty());
        assert_eq!(muxer.skipped(), 1);
        // An IDR without parameter sets resumes with the ones the viewer has.
        let idr_only: Vec<&[u8]> = split_annex_b(&aus[0].data)
            .unwrap()
            .into_iter()
            .filter(|nal| nal[0] & 0x1f == NAL_IDR)
            .collect();
        let pushed = muxer.push(&annex_b(&idr_only), 3, None, None).unwrap();
        assert_eq!(pushed.len(), 1, "no new init segment");
        assert_eq!(sample_times(&pushed[0]).2, SAMPLE_SYNC);
    }
}
