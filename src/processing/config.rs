//! What a checkpoint's image processor does, read from its `preprocessor_config.json` with the
//! semantics of the transformers 5.17 PIL processor classes (`DPTImageProcessorPil`,
//! `BeitImageProcessorPil`, `BitImageProcessorPil`, `ViTImageProcessorPil`), or built from
//! per-architecture defaults when a checkpoint has no such file.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::ProcessingError;

pub const FILE_NAME: &str = "preprocessor_config.json";

const HALF: [f64; 3] = [0.5, 0.5, 0.5];
const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
const DINOV2_DPT_MEAN: [f64; 3] = [123.675, 116.28, 103.53];
const DINOV2_DPT_STD: [f64; 3] = [58.395, 57.12, 57.375];

/// Resampling filter, with PIL's codes as stored under `resample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// PIL code 2.
    Bilinear,
    /// PIL code 3 (Keys cubic with a = -0.5).
    Bicubic,
}

/// How the frame size becomes the resized size (before any crop or pad).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResizeRule {
    /// `DPTImageProcessor`: scale each side to the target; with `keep_aspect_ratio` both sides use
    /// whichever scale is closer to 1; each side is then rounded (half to even, as Python's
    /// `round`) to a multiple of `multiple`.
    Dpt {
        height: i64,
        width: i64,
        keep_aspect_ratio: bool,
        multiple: i64,
    },
    /// `size: {height, width}` in the base processors: exactly that size, aspect ignored.
    Exact { height: i64, width: i64 },
    /// `size: {shortest_edge}`: the short side becomes `edge`, the long side
    /// `int(edge * long / short)` (truncated).
    ShortestEdge(i64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    /// Where the settings came from, for logs and errors.
    pub source: String,
    pub resize: Option<ResizeRule>,
    pub resample: Resample,
    /// `[height, width]` of a centred crop (zero-padded where the image is smaller).
    pub center_crop: Option<[i64; 2]>,
    pub rescale: Option<f64>,
    pub mean: Option<[f64; 3]>,
    pub std: Option<[f64; 3]>,
    /// Centred zero padding of the normalized image up to a multiple of this.
    pub pad_to_multiple: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Dpt,
    Beit,
    Bit,
    Vit,
}

impl Family {
    fn from_type(name: &str) -> Option<Self> {
        let base = name
            .strip_suffix("Pil")
            .or_else(|| name.strip_suffix("Fast"))
            .unwrap_or(name);
        match base {
            "DPTImageProcessor" | "DPTFeatureExtractor" => Some(Self::Dpt),
            "BeitImageProcessor" | "BeitFeatureExtractor" => Some(Self::Beit),
            "BitImageProcessor" => Some(Self::Bit),
            "ViTImageProcessor" | "ViTFeatureExtractor" => Some(Self::Vit),
            _ => None,
        }
    }

    fn from_architecture(architecture: &str) -> Option<Self> {
        if architecture.starts_with("DPT") || architecture.starts_with("DepthAnything") {
            Some(Self::Dpt)
        } else if architecture.starts_with("Beit") || architecture.starts_with("Data2VecVision") {
            Some(Self::Beit)
        } else if architecture.starts_with("Dinov2") || architecture.starts_with("Bit") {
            Some(Self::Bit)
        } else if architecture.starts_with("ViT") {
            Some(Self::Vit)
        } else {
            None
        }
    }

    /// Whether an integer `size` means a square (else the shortest edge), as the class's
    /// `default_to_square`.
    fn int_size_is_square(self) -> bool {
        !matches!(self, Self::Bit)
    }
}

const SUPPORTED_TYPES: &str = "DPTImageProcessor, BeitImageProcessor, BitImageProcessor, ViTImageProcessor \
     (and their Fast/Pil variants and the older *FeatureExtractor names)";

/// The architectures with built-in defaults for checkpoints that ship no processor file.
pub const DEFAULT_ARCHITECTURES: &str = "DPTForDepthEstimation, DPTForSemanticSegmentation, \
     DepthAnythingForDepthEstimation, BeitForImageClassification, Dinov2ForImageClassification";

impl ProcessorConfig {
    /// Parses `preprocessor_config.json` text. `architecture` only decides the processor family
    /// when the file names no `image_processor_type`.
    pub fn parse(path: &Path, text: &str, architecture: &str) -> Result<Self, ProcessingError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ProcessingError::Read {
            path: path.to_path_buf(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let Value::Object(map) = value else {
            return Err(ProcessingError::Read {
                path: path.to_path_buf(),
                reason: "expected a JSON object".into(),
            });
        };
        let keys = Keys { path, map: &map };
        let family = match keys
            .string("image_processor_type")?
            .or(keys.string("feature_extractor_type")?)
        {
            Some(name) => Family::from_type(&name).ok_or_else(|| {
                keys.error(
                    "image_processor_type",
                    format!("'{name}' is not supported; supported: {SUPPORTED_TYPES}"),
                )
            })?,
            None => Family::from_architecture(architecture).ok_or_else(|| {
                keys.error(
                    "image_processor_type",
                    format!(
                        "missing, and architecture '{architecture}' does not say which processor \
                         applies; supported: {SUPPORTED_TYPES}"
                    ),
                )
            })?,
        };
        keys.parse(family)
    }

    /// The processor of the published checkpoints of `architecture` (see MODELS.md), for model
    /// folders without `preprocessor_config.json`. `model_config` is the folder's `config.json`,
    /// when readable: DPT on a DINOv2 backbone is told apart from ViT DPT by it.
    pub fn defaults_for(architecture: &str, model_config: Option<&Value>) -> Option<Self> {
        let dinov2_backbone = model_config
            .and_then(|c| c.get("backbone_config"))
            .and_then(|b| b.get("model_type"))
            .and_then(Value::as_str)
            == Some("dinov2");
        let fixed = |size: i64, mean: [f64; 3], std: [f64; 3], resample| Self {
            source: format!("built-in defaults for {architecture}"),
            resize: Some(ResizeRule::Dpt {
                height: size,
                width: size,
                keep_aspect_ratio: false,
                multiple: 1,
            }),
            resample,
            center_crop: None,
            rescale: Some(1.0 / 255.0),
            mean: Some(mean),
            std: Some(std),
            pad_to_multiple: None,
        };
        let config = match architecture {
            "DPTForDepthEstimation" if dinov2_backbone => Self {
                resize: None,
                rescale: None,
                mean: Some(DINOV2_DPT_MEAN),
                std: Some(DINOV2_DPT_STD),
                pad_to_multiple: Some(14),
                ..fixed(384, HALF, HALF, Resample::Bicubic)
            },
            "DPTForDepthEstimation" => fixed(384, HALF, HALF, Resample::Bilinear),
            "DPTForSemanticSegmentation" => fixed(480, HALF, HALF, Resample::Bilinear),
            "DepthAnythingForDepthEstimation" => Self {
                resize: Some(ResizeRule::Dpt {
                    height: 518,
                    width: 518,
                    keep_aspect_ratio: true,
                    multiple: 14,
                }),
                ..fixed(518, IMAGENET_MEAN, IMAGENET_STD, Resample::Bicubic)
            },
            "BeitForImageClassification" => Self {
                resize: Some(ResizeRule::Exact {
                    height: 224,
                    width: 224,
                }),
                ..fixed(224, HALF, HALF, Resample::Bilinear)
            },
            "Dinov2ForImageClassification" => Self {
                resize: Some(ResizeRule::ShortestEdge(256)),
                center_crop: Some([224, 224]),
                ..fixed(224, IMAGENET_MEAN, IMAGENET_STD, Resample::Bicubic)
            },
            _ => return None,
        };
        Some(config)
    }

    /// Applies the configuration's `input_size` ([height, width] of the model input).
    /// Returns what changed, for the log.
    pub fn override_size(&mut self, height: i64, width: i64) -> String {
        let change = match (&mut self.resize, self.center_crop) {
            (
                Some(ResizeRule::Dpt {
                    height: h,
                    width: w,
                    ..
                }),
                _,
            )
            | (
                Some(ResizeRule::Exact {
                    height: h,
                    width: w,
                }),
                None,
            ) => {
                *h = height;
                *w = width;
                format!("resize target {height}x{width}")
            }
            (Some(ResizeRule::ShortestEdge(edge)), Some([ch, cw])) => {
                // Keep the checkpoint's margin between resize and crop (256 -> 224).
                let ratio = *edge as f64 / ch.min(cw) as f64;
                *edge = (height.max(width) as f64 * ratio).round() as i64;
                self.center_crop = Some([height, width]);
                format!("shortest edge {edge}, centre crop {height}x{width}")
            }
            (Some(_), _) => {
                self.resize = Some(ResizeRule::Exact { height, width });
                self.center_crop = None;
                format!("resize to exactly {height}x{width}, no crop")
            }
            (None, _) => {
                // A processor that feeds frames at their own size (DPT on DINOv2): resizing is the
                // only way to bound the model's input; padding to the patch multiple still applies.
                self.resize = Some(ResizeRule::Dpt {
                    height,
                    width,
                    keep_aspect_ratio: false,
                    multiple: 1,
                });
                format!("resize to {height}x{width} (the processor had none)")
            }
        };
        self.source = format!("{} with input_size {height}x{width}", self.source);
        change
    }
}

struct Keys<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn error(&self, key: &str, reason: impl Into<String>) -> ProcessingError {
        ProcessingError::Config {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// A key that is absent or `null` reads as unset, as transformers does.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, ProcessingError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(key, format!("expected a string, found {other}"))),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, ProcessingError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.error(key, format!("expected true or false, found {other}"))),
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>, ProcessingError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected a number, found {v}"))),
        }
    }

    fn positive_int(&self, key: &str, value: &Value) -> Result<i64, ProcessingError> {
        match value.as_f64() {
            Some(x) if x >= 1.0 && x.fract() == 0.0 && x < 1e9 => Ok(x as i64),
            _ => Err(self.error(key, format!("expected a positive integer, found {value}"))),
        }
    }

    fn triple(&self, key: &str, default: [f64; 3]) -> Result<[f64; 3], ProcessingError> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        let bad = || {
            self.error(
                key,
                format!("expected a number or 3 numbers, found {value}"),
            )
        };
        let numbers: Vec<f64> = match value {
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_f64().ok_or_else(bad))
                .collect::<Result<_, _>>()?,
            other => vec![other.as_f64().ok_or_else(bad)?],
        };
        match numbers[..] {
            [x] => Ok([x; 3]),
            [r, g, b] => Ok([r, g, b]),
            _ => Err(bad()),
        }
    }

    /// `size` / `crop_size` in any of the forms transformers accepts: an integer, `[h, w]`,
    /// `{height, width}` or `{shortest_edge}`.
    fn size(&self, key: &str, int_is_square: bool) -> Result<Option<SizeSpec>, ProcessingError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let spec = match value {
            Value::Number(_) => {
                let n = self.positive_int(key, value)?;
                if int_is_square {
                    SizeSpec::HeightWidth(n, n)
                } else {
                    SizeSpec::ShortestEdge(n)
                }
            }
            Value::Array(items) if items.len() == 2 => SizeSpec::HeightWidth(
                self.positive_int(key, &items[0])?,
                self.positive_int(key, &items[1])?,
            ),
            Value::Object(dict) => {
                let field = |name: &str| dict.get(name).filter(|v| !v.is_null());
                match (
                    field("height"),
                    field("width"),
                    field("shortest_edge"),
                    field("longest_edge"),
                ) {
                    (Some(h), Some(w), None, None) => SizeSpec::HeightWidth(
                        self.positive_int(&format!("{key}.height"), h)?,
                        self.positive_int(&format!("{key}.width"), w)?,
                    ),
                    (None, None, Some(e), None) => SizeSpec::ShortestEdge(
                        self.positive_int(&format!("{key}.shortest_edge"), e)?,
                    ),
                    _ => {
                        return Err(self.error(
                            key,
                            format!(
                                "supported forms are {{height, width}} and {{shortest_edge}}, found {value}"
                            ),
                        ));
                    }
                }
            }
            other => {
                return Err(self.error(
                    key,
                    format!("expected an integer, [height, width] or an object, found {other}"),
                ));
            }
        };
        Ok(Some(spec))
    }

    fn resample(&self) -> Result<Resample, ProcessingError> {
        match self.get("resample") {
            // Every supported class defaults to bicubic except ViT (bilinear); the caller fixes ViT.
            None => Ok(Resample::Bicubic),
            Some(v) => match v.as_i64() {
                Some(2) => Ok(Resample::Bilinear),
                Some(3) => Ok(Resample::Bicubic),
                _ => Err(self.error(
                    "resample",
                    format!(
                        "{v} is not supported: use 2 (bilinear) or 3 (bicubic), the filters whose \
                         PIL output visiond reproduces"
                    ),
                )),
            },
        }
    }

    fn parse(&self, family: Family) -> Result<ProcessorConfig, ProcessingError> {
        let square = family.int_size_is_square();
        let resample = match (family, self.get("resample")) {
            (Family::Vit, None) => Resample::Bilinear,
            _ => self.resample()?,
        };
        let (default_mean, default_std) = match family {
            Family::Bit => (CLIP_MEAN, CLIP_STD),
            _ => (HALF, HALF),
        };
        let do_normalize = self.bool("do_normalize", true)?;
        let do_rescale = self.bool("do_rescale", true)?;
        let rescale = self.number("rescale_factor")?.unwrap_or(1.0 / 255.0);
        let mean = self.triple("image_mean", default_mean)?;
        let std = self.triple("image_std", default_std)?;
        if do_normalize && std.contains(&0.0) {
            return Err(self.error("image_std", "a standard deviation of 0 divides by zero"));
        }
        let do_resize = self.bool("do_resize", true)?;
        let default_size = match family {
            Family::Dpt => SizeSpec::HeightWidth(384, 384),
            Family::Bit => SizeSpec::ShortestEdge(224),
            Family::Beit | Family::Vit => SizeSpec::HeightWidth(224, 224),
        };
        let size = self.size("size", square)?.unwrap_or(default_size);

        let mut config = ProcessorConfig {
            source: self.path.display().to_string(),
            resize: None,
            resample,
            center_crop: None,
            rescale: do_rescale.then_some(rescale),
            mean: do_normalize.then_some(mean),
            std: do_normalize.then_some(std),
            pad_to_multiple: None,
        };
        match family {
            Family::Dpt => {
                if do_resize {
                    let SizeSpec::HeightWidth(height, width) = size else {
                        return Err(self.error(
                            "size",
                            "DPTImageProcessor needs {height, width}, not shortest_edge",
                        ));
                    };
                    let multiple = match self.get("ensure_multiple_of") {
                        None => 1,
                        Some(v) => self.positive_int("ensure_multiple_of", v)?,
                    };
                    config.resize = Some(ResizeRule::Dpt {
                        height,
                        width,
                        keep_aspect_ratio: self.bool("keep_aspect_ratio", false)?,
                        multiple,
                    });
                }
                // transformers pads only when both are set.
                if self.bool("do_pad", false)?
                    && let Some(v) = self.get("size_divisor")
                {
                    config.pad_to_multiple = Some(self.positive_int("size_divisor", v)?);
                }
            }
            Family::Beit | Family::Bit | Family::Vit => {
                if do_resize {
                    config.resize = Some(match size {
                        SizeSpec::HeightWidth(height, width) => ResizeRule::Exact { height, width },
                        SizeSpec::ShortestEdge(edge) => ResizeRule::ShortestEdge(edge),
                    });
                }
                let default_crop = family == Family::Bit;
                if self.bool("do_center_crop", default_crop)? {
                    let crop = match self.size("crop_size", true)? {
                        Some(SizeSpec::HeightWidth(h, w)) => [h, w],
                        None => [224, 224],
                        Some(SizeSpec::ShortestEdge(_)) => {
                            return Err(self.error(
                                "crop_size",
                                "a crop needs {height, width}, not shortest_edge",
                            ));
                        }
                    };
                    config.center_crop = Some(crop);
                }
                if self.bool("do_pad", false)? {
                    return Err(self.error(
                        "do_pad",
                        "batch padding of this processor class is not supported; set it to false",
                    ));
                }
            }
        }
        Ok(config)
    }
}

#[derive(Debug, Clone, Copy)]
enum SizeSpec {
    HeightWidth(i64, i64),
    ShortestEdge(i64),
}

/// Reads `dir/config.json` when it exists, for [`ProcessorConfig::defaults_for`].
pub fn read_model_config(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn config_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, arch: &str) -> Result<ProcessorConfig, ProcessingError> {
        ProcessorConfig::parse(Path::new("m/preprocessor_config.json"), text, arch)
    }

    #[test]
    fn legacy_feature_extractor_with_integer_size() {
        let c = parse(
            r#"{"feature_extractor_type": "DPTFeatureExtractor", "size": 384, "resample": 2,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#,
            "DPTForDepthEstimation",
        )
        .unwrap();
        assert_eq!(
            c.resize,
            Some(ResizeRule::Dpt {
                height: 384,
                width: 384,
                keep_aspect_ratio: false,
                multiple: 1
            })
        );
        assert_eq!(c.resample, Resample::Bilinear);
        assert_eq!(c.rescale, Some(1.0 / 255.0));
    }

    #[test]
    fn integer_size_is_shortest_edge_for_bit() {
        let c = parse(
            r#"{"image_processor_type": "BitImageProcessor", "size": 256, "crop_size": 224}"#,
            "",
        )
        .unwrap();
        assert_eq!(c.resize, Some(ResizeRule::ShortestEdge(256)));
        assert_eq!(c.center_crop, Some([224, 224]));
        assert_eq!(c.mean, Some(CLIP_MEAN));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = parse(
            r#"{"image_processor_type": "DPTImageProcessor", "resample": 1}"#,
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("m/preprocessor_config.json: resample: 1 is not supported"),
            "{e}"
        );
        let e = parse(r#"{"image_processor_type": "SamImageProcessor"}"#, "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("image_processor_type: 'SamImageProcessor' is not supported"),
            "{e}"
        );
        let e = parse(
            r#"{"image_processor_type": "BeitImageProcessor", "size": {"height": 0, "width": 3}}"#,
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("size.height: expected a positive integer"),
            "{e}"
        );
        let e = parse(r#"{"size": 3}"#, "WhisperModel")
            .unwrap_err()
            .to_string();
        assert!(e.contains("architecture 'WhisperModel'"), "{e}");
    }

    #[test]
    fn type_taken_from_architecture_when_missing() {
        let c = parse(
            r#"{"size": {"shortest_edge": 256}}"#,
            "Dinov2ForImageClassification",
        )
        .unwrap();
        assert_eq!(c.resize, Some(ResizeRule::ShortestEdge(256)));
        assert_eq!(c.center_crop, Some([224, 224]));
    }

    #[test]
    fn overrides() {
        let mut c = ProcessorConfig::defaults_for("Dinov2ForImageClassification", None).unwrap();
        c.override_size(448, 448);
        assert_eq!(c.resize, Some(ResizeRule::ShortestEdge(512)));
        assert_eq!(c.center_crop, Some([448, 448]));

        let dinov2: Value =
            serde_json::from_str(r#"{"backbone_config": {"model_type": "dinov2"}}"#).unwrap();
        let mut c = ProcessorConfig::defaults_for("DPTForDepthEstimation", Some(&dinov2)).unwrap();
        assert_eq!(c.resize, None);
        assert_eq!(c.pad_to_multiple, Some(14));
        c.override_size(518, 518);
        assert!(matches!(
            c.resize,
            Some(ResizeRule::Dpt { height: 518, .. })
        ));
        assert_eq!(c.pad_to_multiple, Some(14));
    }
}
