//! anymal-encoders: frozen modality encoders (audio, image, video, IMU) and the `Modality`
//! trait they implement. Wired into the workspace (with candle-transformers for Whisper, CLIP
//! and SigLIP); the encoders arrive with the audio and modality issues.
