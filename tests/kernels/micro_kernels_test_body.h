// The body of tests/kernels/micro_kernels_test.cc, once per ISA: included
// inside that ISA's target region with ATTN_TEST_SUITE (a fixture that skips
// on CPUs without the ISA) and the ISA's kernels/simd/micro_kernels.h in
// scope.
std::vector<float> Uniform(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = u(rng);
  return v;
}

TEST_F(ATTN_TEST_SUITE, GemmOnPackedPanelsMatchesDoubleProduct) {
  std::mt19937 rng(7);
  for (const int64_t m : {1, 2, 3, 5, 6, 7, 11, 12, 13, 25, 96}) {
    for (const int64_t n : {1, 16, 17, 32, 40, 64, 80}) {
      for (const int64_t k : {1, 3, 64, 70}) {
        const int64_t lda = k + 3, n_pad = RoundUpToPanel(n), ldc = n_pad + 16;
        const std::vector<float> a = Uniform(m * lda, rng), b = Uniform(k * n, rng);
        std::vector<float> panels(static_cast<size_t>(k * n_pad));
        PackColumnPanels(b.data(), n, k, n, panels.data());
        std::vector<float> c = Uniform(m * ldc, rng);
        const std::vector<float> c_before = c;
        Gemm<true>(m, n_pad, k, a.data(), lda, panels.data(), k * kPanel, c.data(), ldc);
        std::vector<float> fresh(static_cast<size_t>(m * ldc));
        Gemm<false>(m, n_pad, k, a.data(), lda, panels.data(), k * kPanel, fresh.data(), ldc);
        for (int64_t r = 0; r < m; ++r) {
          for (int64_t col = 0; col < n_pad; ++col) {
            double dot = 0;
            for (int64_t p = 0; p < k; ++p) {
              dot += col < n ? static_cast<double>(a[r * lda + p]) * b[p * n + col] : 0.0;
            }
            const double tolerance = 1e-5 * static_cast<double>(k);
            ASSERT_NEAR(fresh[r * ldc + col], dot, tolerance)
                << "m=" << m << " n=" << n << " k=" << k << " at " << r << "," << col;
            ASSERT_NEAR(c[r * ldc + col], c_before[r * ldc + col] + dot, tolerance)
                << "accumulating, m=" << m << " n=" << n << " k=" << k;
          }
        }
      }
    }
  }
}

TEST_F(ATTN_TEST_SUITE, TransposeIntoPanelMovesEveryValueExactly) {
  std::mt19937 rng(11);
  for (const int64_t width : {1, 7, 8, 13, 64, 128}) {
    const int64_t lds = width + 3;
    const std::vector<float> src = Uniform(kPanel * lds, rng);
    std::vector<float> panel(static_cast<size_t>(width * kPanel), -2.0f);
    TransposeIntoPanel(src.data(), lds, width, panel.data());
    for (int64_t e = 0; e < width; ++e) {
      for (int64_t r = 0; r < kPanel; ++r) {
        ASSERT_EQ(panel[e * kPanel + r], src[r * lds + e]) << "width=" << width << " e=" << e
                                                            << " r=" << r;
      }
    }
  }
}

TEST_F(ATTN_TEST_SUITE, ExpIsWithinTwoUlpsAndExactlyZeroBelowItsRange) {
  std::vector<float> x;
  for (float v = -86.0f; v <= 0.0f; v += 0.0137f) x.push_back(v);
  x.push_back(0.0f);
  const size_t count = x.size();
  for (const float low : {-87.5f, -100.0f, -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN()}) {
    x.push_back(low);
  }
  while (x.size() % kLanes != 0) x.push_back(-1.0f);
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); i += kLanes) Store(y.data() + i, Exp(Load(x.data() + i)));
  for (size_t i = 0; i < count; ++i) {
    const double want = std::exp(static_cast<double>(x[i]));
    ASSERT_NEAR(y[i], want, 2.5e-7 * want) << "exp(" << x[i] << ")";
  }
  for (size_t i = count; i < count + 4; ++i) EXPECT_EQ(y[i], 0.0f) << "exp(" << x[i] << ")";
}

// (AVX-512 computes the whole panel: one register.)
TEST_F(ATTN_TEST_SUITE, HalfPanelKernelWritesExactlyTheFirstEightColumns) {
  std::mt19937 rng(9);
  for (int rows = 1; rows <= kRows; ++rows) {
    for (const int64_t k : {1, 64, 67}) {
      const int64_t lda = k + 1, ldc = 24;
      const std::vector<float> a = Uniform(rows * lda, rng), panel = Uniform(k * kPanel, rng);
      std::vector<float> whole(static_cast<size_t>(rows * ldc), -7.0f);
      std::vector<float> half = whole;
      PanelRows<false>(rows, k, a.data(), lda, panel.data(), whole.data(), ldc);
      PanelRows<false, 8>(rows, k, a.data(), lda, panel.data(), half.data(), ldc);
      for (int r = 0; r < rows; ++r) {
        for (int64_t col = 0; col < ldc; ++col) {
          // The same FMAs in the same order: bit-identical; past the
          // written columns untouched.
          const float want = col < std::max(8, kLanes) ? whole[r * ldc + col] : -7.0f;
          ASSERT_EQ(half[r * ldc + col], want) << rows << " rows, k=" << k << " at " << col;
        }
      }
    }
  }
}

TEST_F(ATTN_TEST_SUITE, PaddedRowReductionsIgnoreAndZeroTheLanesPastTheirLength) {
  std::mt19937 rng(13);
  for (const int64_t n : {1, 5, 8, 9, 15, 16, 100}) {
    const int64_t padded = (n + kLanes - 1) / kLanes * kLanes;
    std::vector<float> x = Uniform(padded, rng);
    // Lanes past n are garbage, even larger than every value or NaN.
    for (int64_t c = n; c < padded; ++c) x[c] = c % 2 ? 1e30f : std::nanf("");
    std::vector<float> reference(x.begin(), x.begin() + n);
    EXPECT_EQ(Max(x.data(), n, Tail::kPadded), Max(reference.data(), n)) << n;
    const float shift = Max(reference.data(), n);
    const float sum = ExpAndSum(x.data(), n, shift, Tail::kPadded);
    const float want = ExpAndSum(reference.data(), n, shift);
    EXPECT_NEAR(sum, want, 1e-6f * static_cast<float>(n)) << n;
    for (int64_t c = 0; c < n; ++c) EXPECT_EQ(x[c], reference[c]) << n << " at " << c;
    for (int64_t c = n; c < padded; ++c) EXPECT_EQ(x[c], 0.0f) << n << " at " << c;
  }
}

TEST_F(ATTN_TEST_SUITE, RowReductionsMatchScalarLoops) {
  std::mt19937 rng(11);
  for (const int64_t n : {1, 7, 8, 9, 100}) {
    std::vector<float> x = Uniform(n, rng);
    float max = x[0];
    double sum = 0;
    for (float v : x) max = std::max(max, v);
    for (float v : x) sum += v;
    EXPECT_EQ(Max(x.data(), n), max) << n;
    EXPECT_NEAR(SumInDouble(x.data(), n), sum, 1e-12) << n;
    const std::vector<float> before = x;
    const float total = ExpAndSum(x.data(), n, max);
    double want = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double e = std::exp(static_cast<double>(before[i]) - max);
      EXPECT_NEAR(x[i], e, 3e-7) << n << " at " << i;
      want += e;
    }
    EXPECT_NEAR(total, want, 1e-6 * static_cast<double>(n)) << n;
  }
}

TEST_F(ATTN_TEST_SUITE, AllFiniteFindsEveryNonFiniteValueAtEveryPosition) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const float bad_values[] = {kInf, -kInf, std::numeric_limits<float>::quiet_NaN()};
  for (const int64_t n : {1, 7, 8, 31, 32, 33, 100}) {
    // Finite extremes must pass: the largest float, the smallest subnormal, -0.
    std::vector<float> x(static_cast<size_t>(n), std::numeric_limits<float>::max());
    x[0] = -std::numeric_limits<float>::max();
    if (n > 1) x[1] = std::numeric_limits<float>::denorm_min();
    if (n > 2) x[2] = -0.0f;
    EXPECT_TRUE(AllFinite(x.data(), n)) << n;
    for (const float bad : bad_values) {
      for (int64_t i = 0; i < n; ++i) {
        const float kept = x[static_cast<size_t>(i)];
        x[static_cast<size_t>(i)] = bad;
        EXPECT_FALSE(AllFinite(x.data(), n)) << n << " with " << bad << " at " << i;
        x[static_cast<size_t>(i)] = kept;
      }
    }
  }
  EXPECT_TRUE(AllFinite(nullptr, 0));
}
