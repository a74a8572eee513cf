/*
 * switch_aarch64.S: lockstep's context switch for AArch64 (AAPCS64, ELF).
 * Used by src/fiber.c unless LOCKSTEP_FORCE_UCONTEXT is set.
 *
 * ABI: the switch is an ordinary call, so only what the callee must
 * preserve is saved: x19-x28, the frame pointer x29, the link register x30,
 * the low 64 bits of v8-v15 (d8-d15), sp and FPCR (rounding mode and other
 * control bits).  FPSR (cumulative exception flags) is status, not saved.
 * FPCR is only written when it differs, since msr fpcr can be slow.
 *
 * Frame (176 bytes, keeps sp 16-byte aligned) on the stack being left; the
 * saved sp points at offset 0:
 *     +0   x19 x20    +16  x21 x22    +32  x23 x24    +48  x25 x26
 *     +64  x27 x28    +80  x29 x30    +96  d8  d9     +112 d10 d11
 *     +128 d12 d13    +144 d14 d15    +160 FPCR       +168 unused
 * src/fiber.c builds the same frame on a fresh stack with x19 = the fiber,
 * x29 = 0 and x30 = lockstep__fiber_boot, so boot starts with sp 16-byte
 * aligned at the top of the stack.
 *
 * The switch leaves by br x30 rather than ret, since a ret into another
 * context never matches the return-address predictor.
 *
 * BTI/PAC: with -mbranch-protection the entry point gets "bti c", the
 * switch leaves by ret (BTI would reject br to a call site) and the object
 * is marked accordingly.  The boot stub is then reached by ret, which BTI
 * does not check.  This code neither signs nor authenticates x30.
 */
#if defined(__aarch64__) && defined(__ELF__) && !defined(LOCKSTEP_FORCE_UCONTEXT)

#if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
#  define LS_BTI_C hint #34
#  define LS_PROP_BTI 1
#else
#  define LS_BTI_C
#  define LS_PROP_BTI 0
#endif
#if defined(__ARM_FEATURE_PAC_DEFAULT) && __ARM_FEATURE_PAC_DEFAULT
#  define LS_PROP_PAC 2
#else
#  define LS_PROP_PAC 0
#endif

        .text

/*
 * void *lockstep__fiber_swap(void **save_sp, void *new_sp, void *pass);
 * Pushes the callee-saved state, stores sp in *save_sp, loads new_sp (a
 * frame made by this function or by fiber.c) and returns on that stack.
 * The value returned there is the pass argument of the swap that resumed
 * it, which src/fiber.c uses to learn which fiber it came from.
 */
        .globl  lockstep__fiber_swap
        .hidden lockstep__fiber_swap
        .type   lockstep__fiber_swap, %function
        .p2align 4
lockstep__fiber_swap:
        .cfi_startproc
        LS_BTI_C
        sub     sp, sp, #176
        .cfi_adjust_cfa_offset 176
        stp     x19, x20, [sp, #0]
        stp     x21, x22, [sp, #16]
        stp     x23, x24, [sp, #32]
        stp     x25, x26, [sp, #48]
        stp     x27, x28, [sp, #64]
        stp     x29, x30, [sp, #80]
        stp     d8, d9, [sp, #96]
        stp     d10, d11, [sp, #112]
        stp     d12, d13, [sp, #128]
        stp     d14, d15, [sp, #144]
        .cfi_rel_offset x19, 0
        .cfi_rel_offset x20, 8
        .cfi_rel_offset x21, 16
        .cfi_rel_offset x22, 24
        .cfi_rel_offset x23, 32
        .cfi_rel_offset x24, 40
        .cfi_rel_offset x25, 48
        .cfi_rel_offset x26, 56
        .cfi_rel_offset x27, 64
        .cfi_rel_offset x28, 72
        .cfi_rel_offset x29, 80
        .cfi_rel_offset x30, 88
        .cfi_rel_offset d8, 96
        .cfi_rel_offset d9, 104
        .cfi_rel_offset d10, 112
        .cfi_rel_offset d11, 120
        .cfi_rel_offset d12, 128
        .cfi_rel_offset d13, 136
        .cfi_rel_offset d14, 144
        .cfi_rel_offset d15, 152
        mrs     x9, fpcr
        str     x9, [sp, #160]

        mov     x10, sp
        str     x10, [x0]               /* save the old context */
        mov     sp, x1                  /* same frame layout: CFI stays valid */

        ldr     x10, [sp, #160]
        cmp     x9, x10
        b.eq    1f
        msr     fpcr, x10
1:
        ldp     x19, x20, [sp, #0]
        ldp     x21, x22, [sp, #16]
        ldp     x23, x24, [sp, #32]
        ldp     x25, x26, [sp, #48]
        ldp     x27, x28, [sp, #64]
        ldp     x29, x30, [sp, #80]
        ldp     d8, d9, [sp, #96]
        ldp     d10, d11, [sp, #112]
        ldp     d12, d13, [sp, #128]
        ldp     d14, d15, [sp, #144]
        add     sp, sp, #176
        .cfi_adjust_cfa_offset -176
        mov     x0, x2                  /* what the resumed side receives */
#if LS_PROP_BTI
        ret                             /* BTI would reject br to a call site */
#else
        br      x30                     /* not ret: keeps the return predictor in step */
#endif
        .cfi_endproc
        .size   lockstep__fiber_swap, .-lockstep__fiber_swap

/*
 * lockstep__fiber_boot: where a fresh fiber's first swap returns to, with
 * sp 16-byte aligned, x19 = the fiber and x0 = the pass value.  Calls
 * lockstep__fiber_start(fiber, pass), which never returns.  The CFI marks
 * the outermost frame for unwinders.
 */
        .globl  lockstep__fiber_boot
        .hidden lockstep__fiber_boot
        .type   lockstep__fiber_boot, %function
        .p2align 4
lockstep__fiber_boot:
        .cfi_startproc
        .cfi_undefined x30
        mov     x1, x0
        mov     x0, x19
        bl      lockstep__fiber_start
        brk     #0x3e8
        .cfi_endproc
        .size   lockstep__fiber_boot, .-lockstep__fiber_boot

#if LS_PROP_BTI || LS_PROP_PAC
        /* GNU_PROPERTY_AARCH64_FEATURE_1_AND: BTI and/or PAC. */
        .section .note.gnu.property, "a", %note
        .p2align 3
        .long   4                       /* name size */
        .long   16                      /* descriptor size */
        .long   5                       /* NT_GNU_PROPERTY_TYPE_0 */
        .asciz  "GNU"
        .long   0xc0000000              /* GNU_PROPERTY_AARCH64_FEATURE_1_AND */
        .long   4
        .long   (LS_PROP_BTI | LS_PROP_PAC)
        .long   0
#endif

#endif /* __aarch64__ && __ELF__ && !LOCKSTEP_FORCE_UCONTEXT */

#if defined(__ELF__)
        .section .note.GNU-stack, "", %progbits
#endif
