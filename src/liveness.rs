//! Liveness (room for presentation-attack detection): passive PAD models, the active
//! challenge, planarity from landmarks, camera checks against injected feeds. Same layer as
//! `analysis`; the verdict layer above combines its answer with the others. Nothing lives here
//! yet.
