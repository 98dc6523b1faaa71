// brain.js 1.6 ships no types; benches/recurrent.ts describes the little it uses.
declare module 'brain.js';
