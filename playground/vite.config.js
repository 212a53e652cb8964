// Vite settings for the GraphiQL playground. build.rs runs `npm run build`
// with `--outDir` pointing into Cargo's OUT_DIR; the server embeds the result.
import { defineConfig } from 'vite';

export default defineConfig({
  // The server serves the assets under /playground/assets/ whichever page
  // (`/`, `/playground`) loads them, so the URLs must be absolute.
  base: '/playground/',
  logLevel: 'warn',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    // GraphiQL is big; the bundle is served from memory, so the warning is noise.
    chunkSizeWarningLimit: 4096,
    // Computing gzip sizes only slows the build down.
    reportCompressedSize: false,
    rollupOptions: {
      onwarn(warning, warn) {
        // Libraries written for React Server Components start their modules
        // with "use client"; that directive means nothing in this bundle.
        if (warning.code === 'MODULE_LEVEL_DIRECTIVE') return;
        warn(warning);
      },
    },
  },
});
