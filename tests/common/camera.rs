//! A camera stand-in: gst-rtsp-server serving a live H.264 test pattern on loopback, which can
//! be stopped (every client cut off, the port closed) and started again on the same port.

use gstreamer as gst;
use gstreamer_rtsp_server::prelude::*;

pub struct Camera {
    server: gstreamer_rtsp_server::RTSPServer,
    context: gst::glib::MainContext,
    source: Option<gst::glib::SourceId>,
    main_loop: gst::glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Camera {
    /// Serves `/cam` (128x96 at 30 fps, a keyframe every 15 frames) on `port` (0: a free one).
    pub fn start(port: u16) -> Self {
        gst::init().unwrap();
        let server = gstreamer_rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());
        let factory = gstreamer_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(
            "( videotestsrc is-live=true ! video/x-raw,width=128,height=96,framerate=30/1 \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 )",
        );
        factory.set_shared(true);
        server.mount_points().unwrap().add_factory("/cam", factory);
        let context = gst::glib::MainContext::new();
        let source = server.attach(Some(&context)).expect("camera port free");
        let main_loop = gst::glib::MainLoop::new(Some(&context), false);
        let thread = std::thread::spawn({
            let main_loop = main_loop.clone();
            let context = context.clone();
            move || {
                let _guard = context.acquire().unwrap();
                main_loop.run();
            }
        });
        Camera {
            server,
            context,
            source: Some(source),
            main_loop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.server.bound_port() as u16
    }

    /// The camera "reboots": every client is cut off and the port closes.
    pub fn stop(mut self) {
        let id = self.source.take().unwrap();
        self.context.find_source_by_id(&id).unwrap().destroy();
        self.server.client_filter(Some(&mut |_, _| {
            gstreamer_rtsp_server::RTSPFilterResult::Remove
        }));
        self.main_loop.quit();
        self.thread.take().unwrap().join().unwrap();
    }
}
