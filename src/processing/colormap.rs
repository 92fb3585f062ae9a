//! Colour lookup tables: depth colormaps (256 entries) and segmentation palettes (one colour a
//! class). Kept as host data; the annotator uploads each once per device.

use super::colormap_tables::{INFERNO, MAGMA, TURBO, VIRIDIS};
use crate::config::Colormap;

/// 256 RGB entries, index 0 for the low end of the depth range.
pub fn colormap_table(colormap: Colormap) -> Vec<[u8; 3]> {
    let flat: &[u8; 768] = match colormap {
        Colormap::Turbo => &TURBO,
        Colormap::Inferno => &INFERNO,
        Colormap::Magma => &MAGMA,
        Colormap::Viridis => &VIRIDIS,
        Colormap::Grayscale => return (0..=255u8).map(|v| [v, v, v]).collect(),
    };
    flat.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()
}

/// The ADE20K palette for 150 classes (the one the ADE20K benchmark and mmsegmentation draw
/// with), otherwise the PASCAL VOC bit-interleaved palette, which gives any number of classes
/// distinct colours (class 0 black).
pub fn palette(classes: usize) -> Vec<[u8; 3]> {
    if classes == ADE20K.len() {
        return ADE20K.to_vec();
    }
    (0..classes)
        .map(|class| {
            let mut rgb = [0u8; 3];
            let mut c = class;
            for bit in 0..8 {
                for (channel, value) in rgb.iter_mut().enumerate() {
                    *value |= (((c >> channel) & 1) as u8) << (7 - bit);
                }
                c >>= 3;
            }
            rgb
        })
        .collect()
}

#[rustfmt::skip]
pub const ADE20K: [[u8; 3]; 150] = [
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80],
    [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7],
    [150, 5, 61], [120, 120, 70], [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4],
    [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255],
    [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
    [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10], [7, 255, 255],
    [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255],
    [140, 140, 140], [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0],
    [153, 255, 0], [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
    [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112], [0, 255, 133],
    [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0], [0, 143, 255], [51, 255, 0],
    [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0], [0, 255, 153],
    [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
    [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255],
    [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255],
    [163, 255, 0], [255, 235, 0], [8, 184, 170], [133, 0, 255], [0, 255, 92], [184, 0, 255],
    [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255],
    [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
    [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255],
    [255, 255, 0], [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0],
    [173, 0, 255], [0, 245, 255], [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255],
    [184, 255, 0], [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_match_matplotlib() {
        let ends = |c| {
            let t = colormap_table(c);
            assert_eq!(t.len(), 256);
            (t[0], t[255])
        };
        assert_eq!(ends(Colormap::Turbo), ([48, 18, 59], [122, 4, 3]));
        assert_eq!(ends(Colormap::Inferno), ([0, 0, 4], [252, 255, 164]));
        assert_eq!(ends(Colormap::Magma), ([0, 0, 4], [252, 253, 191]));
        assert_eq!(ends(Colormap::Viridis), ([68, 1, 84], [253, 231, 37]));
        assert_eq!(ends(Colormap::Grayscale), ([0, 0, 0], [255, 255, 255]));
    }

    #[test]
    fn palettes_are_distinct() {
        // Not 150: the ADE20K palette itself repeats [140, 140, 140] (classes 6 and 48).
        for n in [2, 5, 21, 149, 300] {
            let p = palette(n);
            assert_eq!(p.len(), n);
            let unique: std::collections::HashSet<_> = p.iter().collect();
            assert_eq!(unique.len(), n, "{n} classes");
        }
        assert_eq!(palette(21)[1], [128, 0, 0]);
        assert_eq!(palette(150)[0], [120, 120, 120]);
    }
}
